"""module_utils/manifests.py: every malformed line gets file:line:col, valid lines round-trip."""

from __future__ import annotations

import subprocess

import pytest
from ansible.module_utils import manifests as m
from hypothesis import given
from hypothesis import strategies as st

SRC = "templates/t/models_manifest.txt"
URL = "https://huggingface.co/o/r/resolve/main/model.safetensors"
SHA = "ab" * 32
C1, C2 = "1" * 40, "2" * 40


def raised(func, *args) -> m.ManifestError:
    with pytest.raises(m.ManifestError) as caught:
        func(*args)
    return caught.value


def issues(text: str, parse=m.parse_models, source: str = SRC) -> list[m.ManifestIssue]:
    with pytest.raises(m.ManifestError) as caught:
        parse(text, source)
    return list(caught.value.issues)


def test_valid_models_manifest():
    text = f"""# comment
checkpoints {URL} sha256={SHA.upper()} size=42  # trailing comment

loras https://civitai.com/api/download/models/123?type=Model name=detail%20lora.safetensors
vae https://h/a/b%20c.pt?download=true#frag
"""
    entries = m.parse_models(text, SRC)
    assert [e.dest for e in entries] == [
        "checkpoints/model.safetensors",
        "loras/detail%20lora.safetensors",
        "vae/b c.pt",
    ]
    assert entries[0].sha256 == SHA and entries[0].size == 42 and entries[0].line == 2


@pytest.mark.parametrize(
    ("line", "col", "needle"),
    [
        (f"checkpoint {URL}", 1, "unknown model folder 'checkpoint'; use one of: audio_encoders"),
        (f"chekpoints {URL}", 1, "(did you mean 'checkpoints'?)"),
        (f"{URL}", 1, "line must start with a model folder"),
        ("checkpoints", 12, "missing URL"),
        ("vae ftp://h/x.bin", 5, "URL scheme 'ftp' is not supported"),
        ("vae h/x.bin", 5, "URL scheme '(none)' is not supported"),
        ("vae https:///x.bin", 5, "has no host"),
        ("vae https://u:p@h/x.bin", 5, "carries credentials"),
        ("vae https://h:99999/x.bin", 5, "malformed URL"),
        ("vae https://h/x\u00e9.bin", 5, "outside printable ASCII"),
        ("vae https://h/dir/", 5, "cannot take a file name from the URL"),
        ("vae https://h/%2e%2e", 5, "hidden or a relative path"),
        ("vae https://h/a%2Fb.bin", 5, "path separator"),
        ("vae https://h/x.bin.part", 5, "ends with '.part'"),
        ("vae https://h/x.bin name=../x", 26, "path separator"),
        ("vae https://h/x.bin name=.hidden", 26, "hidden"),
        ("vae https://h/x.bin name=", 26, "empty file name"),
        ("vae https://h/x.bin name=a\\b", 26, "path separator"),
        ("vae https://h/x.bin nme=a", 21, "unknown key 'nme'; use one of: name, sha256, size"),
        ("vae https://h/x.bin sha=ab", 21, "(did you mean 'sha256'?)"),
        ("vae https://h/x.bin sha256=abc", 28, "not 64 hex digits (3 characters)"),
        (f"vae https://h/x.bin sha256={'g' * 64}", 28, "not hexadecimal"),
        (f"vae https://h/x.bin sha256={SHA}0", 28, "(65 characters)"),
        ("vae https://h/x.bin size=0", 26, "not a positive whole number"),
        ("vae https://h/x.bin size=-5", 26, "not a positive whole number"),
        ("vae https://h/x.bin size=1_000", 26, "not a positive whole number"),
        ("vae https://h/x.bin size=1e6", 26, "not a positive whole number"),
        ("vae https://h/x.bin size=1 size=2", 28, "'size=' given twice"),
        ("vae https://h/x.bin extra", 21, "unexpected 'extra'"),
        ("vae https://h/x.bin #comment-without-space", 0, None),
        ("vae https://h/x.bin name=a#b", 0, None),
    ],
)
def test_models_errors_name_file_line_column(line, col, needle):
    text = f"# header\n\n{line}\n"
    if needle is None:  # valid: '#' inside a token is not a comment
        assert m.parse_models(text, SRC)
        return
    found = issues(text)
    assert any(needle in str(i) for i in found), [str(i) for i in found]
    first = next(i for i in found if needle in str(i))
    assert str(first).startswith(f"{SRC}:3:{col}: "), str(first)
    assert first.fix


def test_all_errors_reported_at_once_and_duplicates_name_both_lines():
    text = f"checkpoint {URL}\nvae {URL}\nloras {URL} size=x\nvae {URL} name=model.safetensors\n"
    err = raised(m.parse_models, text, SRC)
    lines = [i.line for i in err.issues]
    assert lines == [1, 3, 4]
    assert "duplicate destination 'vae/model.safetensors' (line 2 and line 4)" in str(err)
    assert err.file == SRC and err.line == 1 and err.column == 1 and err.fix


def test_merge_models_across_files():
    a = m.parse_models(f"vae {URL}\n", "a.txt")
    same = m.parse_models(f"# x\nvae {URL}\n", "b.txt")
    other = m.parse_models(f"vae {URL} size=5\n", "c.txt")
    assert len(m.merge_models(a, same)) == 1
    err = raised(m.merge_models, a, other)
    assert "c.txt:1:1" in str(err) and "a.txt:1" in str(err)


def test_missing_file_is_a_manifest_error(tmp_path):
    err = raised(m.load_models, tmp_path / "nope.txt")
    assert "file not found" in str(err)


_seg = st.text("abcXYZ019-_.", min_size=1, max_size=12).filter(
    lambda s: not s.startswith(".") and not s.endswith((".part", ".aria2", ".lock"))
)


@given(
    folder=st.sampled_from(m.MODEL_FOLDERS),
    host=st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){1,2}", fullmatch=True),
    path=st.lists(_seg, min_size=1, max_size=3),
    query=st.sampled_from(["", "?download=true", "?a=1&b=2"]),
    name=st.none() | _seg,
    sha=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    size=st.none() | st.integers(min_value=1, max_value=10**13),
)
def test_rendered_entry_parses_back(folder, host, path, query, name, sha, size):
    url = f"https://{host}/{'/'.join(path)}{query}"
    entry = m.ModelEntry(folder, url, name or m.default_model_name(url), sha, size)
    parsed = m.parse_models(entry.render() + "  # note\n", SRC)
    assert parsed == [entry]


@given(st.text(max_size=80))
def test_any_line_parses_or_raises_manifest_error(line):
    try:
        m.parse_models(line, SRC)
    except m.ManifestError as err:
        for issue in err.issues:
            assert issue.file == SRC and issue.line >= 1 and issue.column >= 1


# ------------------------------------------------------------------------------------------
# Nodes


def test_nodes_manifest_forms():
    text = f"""https://github.com/ltdrdata/ComfyUI-Manager@3.39
git@github.com:cubiq/ComfyUI_essentials.git@main  # branch
https://github.com/a/b.git@{C1}
ssh://git@host/x/c
"""
    nodes = m.parse_nodes(text, "n.txt")
    assert [(n.url, n.ref, n.name) for n in nodes] == [
        ("https://github.com/ltdrdata/ComfyUI-Manager", "3.39", "ComfyUI-Manager"),
        ("git@github.com:cubiq/ComfyUI_essentials.git", "main", "ComfyUI_essentials"),
        ("https://github.com/a/b.git", C1, "b"),
        ("ssh://git@host/x/c", None, "c"),
    ]
    assert [n.pinned for n in nodes] == [False, False, True, False]
    assert nodes[0].ref_column == 45


@pytest.mark.parametrize(
    ("line", "col", "needle"),
    [
        ("http://github.com/a/b", 1, "plain http://"),
        ("ftp://github.com/a/b", 1, "scheme 'ftp' is not supported"),
        ("https://tok@github.com/a/b", 1, "carries credentials"),
        ("github.com/a/b", 1, "is not a git URL"),
        ("https://github.com/a/b@", 24, "empty ref"),
        ("https://github.com/a/b@v..1", 24, "contains '..'"),
        ("https://github.com/a/b@-x", 24, "starts with '-'"),
        ("https://github.com/a/b@x.lock", 24, "ends with"),
        ("https://github.com/a/b@a~1", 24, "contains '~'"),
        ("https://github.com/a/b@main extra", 29, "unexpected 'extra'"),
        ("https://github.com/", 1, "cannot take a directory name"),
    ],
)
def test_nodes_errors(line, col, needle):
    found = issues(f"\n{line}\n", m.parse_nodes, "n.txt")
    first = next(i for i in found if needle in str(i))
    assert str(first).startswith(f"n.txt:2:{col}: ")


def test_nodes_duplicates_by_repo_and_by_directory():
    text = "https://github.com/a/X\nhttps://GitHub.com/a/X.git/@v1\nhttps://gitlab.com/b/X\n"
    msgs = [str(i) for i in issues(text, m.parse_nodes, "n.txt")]
    assert msgs[0].startswith("n.txt:2:1: ") and "listed twice (line 1 and line 2)" in msgs[0]
    assert msgs[1].startswith("n.txt:3:1: ") and "custom_nodes/X" in msgs[1]


REFS = {
    "HEAD": C1,
    "refs/heads/main": C1,
    "refs/tags/v1": "3" * 40,
    "refs/tags/v1^{}": C2,  # annotated tag: the peeled commit wins
    "refs/tags/dup": C1,
    "refs/heads/dup": C2,
}


def fake_ls_remote(calls):
    def ls_remote(url, ref):
        calls.append((url, ref))
        return {k: v for k, v in REFS.items() if k == ref or k.split("/")[-1].startswith(ref)}

    return ls_remote


def test_lock_and_locked_nodes(tmp_path):
    manifest = tmp_path / "nodes_manifest.txt"
    manifest.write_text(
        f"https://h/o/a@main\nhttps://h/o/b@v1\nhttps://h/o/c\nhttps://h/o/d@{C2}\n"
    )
    calls: list = []
    result = m.lock_nodes(manifest, ls_remote=fake_ls_remote(calls))
    assert result.changed and result.path == str(tmp_path / "nodes_manifest.lock")
    assert [n.commit for n in result.nodes] == [C1, C2, C1, C2]
    assert ("https://h/o/d", C2) not in calls  # a full commit needs no remote
    lock = (tmp_path / "nodes_manifest.lock").read_text()
    assert f"https://h/o/c HEAD {C1}" in lock
    assert not m.lock_nodes(manifest, ls_remote=fake_ls_remote([])).changed
    assert [n.commit for n in m.locked_nodes(manifest)] == [C1, C2, C1, C2]


def test_locked_nodes_refuses_unlocked_refs(tmp_path):
    manifest = tmp_path / "nodes_manifest.txt"
    manifest.write_text(f"https://h/o/a@main\nhttps://h/o/d@{C2}\n")
    err = raised(m.locked_nodes, manifest)
    assert len(err.issues) == 1
    assert str(err).startswith(f"{manifest}:1:15: 'https://h/o/a@main' is not in ")
    m.lock_nodes(manifest, ls_remote=fake_ls_remote([]))
    manifest.write_text(f"https://h/o/a@v1\nhttps://h/o/d@{C2}\n")  # ref changed, lock stale
    err = raised(m.locked_nodes, manifest)
    assert "locked as 'main'" in str(err)


def test_lock_reports_every_unresolvable_ref(tmp_path):
    manifest = tmp_path / "nodes_manifest.txt"
    manifest.write_text("https://h/o/a@nope\nhttps://h/o/b@dup\nhttps://h/o/c@main\n")
    err = raised(m.lock_nodes, manifest, fake_ls_remote([]))
    assert [i.line for i in err.issues] == [1, 2]
    assert "not found on the remote" in str(err) and "both a tag and a branch" in str(err)
    assert not (tmp_path / "nodes_manifest.lock").exists()


def test_bad_lock_file(tmp_path):
    manifest = tmp_path / "nodes_manifest.txt"
    manifest.write_text("https://h/o/a@main\n")
    (tmp_path / "nodes_manifest.lock").write_text("https://h/o/a main abc\n")
    err = raised(m.locked_nodes, manifest)
    assert str(err).startswith(f"{tmp_path / 'nodes_manifest.lock'}:1:20: commit 'abc'")


def test_git_ls_remote_against_a_real_repository(tmp_path):
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "one"], check=True)
    subprocess.run([*git, "tag", "-a", "v1", "-m", "annotated"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    manifest = tmp_path / "nodes_manifest.txt"
    manifest.write_text(f"file://{repo}@v1\nfile://{tmp_path}/other/repo2@main\n")
    subprocess.run(["git", "init", "-q", "-b", "main", str(tmp_path / "other" / "repo2")])
    err = raised(m.lock_nodes, manifest)  # repo2 has no commit
    assert [i.line for i in err.issues] == [2]
    manifest.write_text(f"file://{repo}@v1\n")
    result = m.lock_nodes(manifest)
    assert result.nodes[0].commit == head.stdout.strip()  # peeled, not the tag object
