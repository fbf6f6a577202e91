"""gitsource: files of a repository at a pinned commit, through a bare cache (real git)."""

from __future__ import annotations

import pytest
from ansible.module_utils.gitsource import (
    GitSourceError,
    SourceUnreachable,
    ensure_commit,
    follow,
    read_file,
    require_commit,
    requirement_lines,
)
from gitserver import commit_all, git, make_repo


@pytest.fixture
def repo(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "requirements.txt").write_text("torch\nnumpy>=1.25 # comment\n-r other.txt\n\n")
    path, commit = make_repo(src, tmp_path / "repo")
    return path, commit


def test_require_commit_accepts_only_full_shas():
    assert require_commit("a" * 40, "comfyui.ref") == "a" * 40
    with pytest.raises(GitSourceError, match=r"comfyui.ref: 'v0.3.1' is not a full 40-hex"):
        require_commit("v0.3.1", "comfyui.ref")


def test_requirement_lines_drop_comments_options_and_blanks():
    assert requirement_lines("a\n# x\nb==1 # why\n--extra-index-url u\n\n") == ["a", "b==1"]
    assert requirement_lines(None) == []


def test_read_file_at_the_commit_and_from_the_cache(tmp_path, repo):
    path, commit = repo
    cache = tmp_path / "cache"
    text = read_file(cache, f"file://{path}", commit, "requirements.txt", "comfyui.repo")
    assert text.startswith("torch\n")
    (path / "requirements.txt").write_text("changed\n")
    commit_all(path, "later")
    # the pinned commit still reads the old content, from the cache
    again = read_file(cache, f"file://{path}", commit, "requirements.txt", "comfyui.repo")
    assert again == text
    assert read_file(cache, f"file://{path}", commit, "missing.txt", "comfyui.repo") is None


def test_a_commit_the_repository_lacks_is_named(tmp_path, repo):
    path, _ = repo
    with pytest.raises(GitSourceError, match=r"manager.repo: .*" + "b" * 40):
        ensure_commit(tmp_path / "cache", f"file://{path}", "b" * 40, "manager.repo")


def test_follow_a_branch_moves_with_it(repo):
    path, first = repo
    url = f"file://{path}"
    assert follow(url, "main", "comfyui.follow") == ("main", first)
    (path / "new.txt").write_text("x\n")
    second = commit_all(path, "next")
    assert follow(url, "main", "comfyui.follow") == ("main", second)


def test_follow_the_release_line_takes_the_highest_version(repo):
    path, first = repo
    git(path, "tag", "v0.3.9")
    (path / "a.txt").write_text("a\n")
    newest = commit_all(path, "newest")
    git(path, "tag", "-a", "-m", "release", "v0.3.10")  # annotated: the commit, not the tag
    (path / "b.txt").write_text("b\n")
    commit_all(path, "unreleased")
    git(path, "tag", "nightly-20261123")
    git(path, "tag", "v0.3.11-rc1")  # a pre-release is not the release line
    git(path, "tag", "v0.4.0b2")
    url = f"file://{path}"
    assert follow(url, "v*", "comfyui.follow") == ("v0.3.10", newest)
    assert follow(url, "v0.3.9", "comfyui.follow") == ("v0.3.9", first)


def test_follow_says_what_is_missing_and_what_is_unreachable(repo, tmp_path):
    path, _ = repo
    with pytest.raises(GitSourceError, match=r"comfyui.follow: no tag of .* matches 'v\*'"):
        follow(f"file://{path}", "v*", "comfyui.follow")
    with pytest.raises(GitSourceError, match=r"has no branch or tag 'release'"):
        follow(f"file://{path}", "release", "comfyui.follow")
    with pytest.raises(SourceUnreachable, match=r"manager.follow: cannot list the refs"):
        follow(f"file://{tmp_path}/nothing-here", "main", "manager.follow")
