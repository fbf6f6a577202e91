"""Read files of a git repository at a pinned commit, through a local bare cache.

The plan needs ComfyUI's and ComfyUI-Manager's requirements.txt at their pinned commits to
resolve the package layers; it fetches the commit once into ``<cache>/git/<sha256(url)>``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import subprocess
from pathlib import Path

COMMIT = re.compile(r"^[0-9a-f]{40}$")


class GitSourceError(Exception):
    """A repository or commit cannot be read; the message names the variable and the fix."""


class SourceUnreachable(GitSourceError):
    """The repository cannot be fetched at all (network, DNS, wrong host): nodes that need it
    are skipped with this reason rather than failing the whole plan."""


def _git(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=600
    )


def require_commit(ref: str, where: str) -> str:
    """A build needs full commit SHAs (BLD-3)."""
    if not COMMIT.match(ref):
        raise GitSourceError(
            f"{where}: {ref!r} is not a full 40-hex commit SHA; builds are pinned to commits. "
            f"Fix: set {where} to the commit (git ls-remote <repo> {ref})"
        )
    return ref


def cache_repo(cache_dir: Path, url: str) -> Path:
    path = Path(cache_dir) / "git" / hashlib.sha256(url.encode()).hexdigest()[:24]
    if not (path / "HEAD").exists():
        path.mkdir(parents=True, exist_ok=True)
        done = _git(["init", "--quiet", "--bare", str(path)])
        if done.returncode != 0:
            raise GitSourceError(f"cannot create a git cache at {path}: {done.stderr.strip()}")
    return path


def ensure_commit(cache_dir: Path, url: str, commit: str, where: str) -> Path:
    """Fetch ``commit`` of ``url`` into the cache unless it is there; return the bare repo."""
    repo = cache_repo(cache_dir, url)
    if _git(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo).returncode == 0:
        return repo
    fetched = _git(["fetch", "--quiet", "--depth=1", url, commit], cwd=repo)
    if fetched.returncode != 0:  # servers that refuse fetching a commit by SHA
        fetched = _git(["fetch", "--quiet", url, "+refs/*:refs/remotes/src/*"], cwd=repo)
    if fetched.returncode != 0:
        raise SourceUnreachable(
            f"{where}: cannot fetch {url} ({fetched.stderr.strip() or 'git fetch failed'}). "
            "Fix: check the URL and the network, or point it at a reachable mirror"
        )
    if _git(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo).returncode != 0:
        raise GitSourceError(
            f"{where}: commit {commit} is not in {url}. Fix: use a commit of that repository"
        )
    return repo


def read_file(cache_dir: Path, url: str, commit: str, path: str, where: str) -> str | None:
    """The text of ``path`` at ``commit``, or None when the commit has no such file."""
    repo = ensure_commit(cache_dir, url, commit, where)
    shown = _git(["show", f"{commit}:{path}"], cwd=repo)
    return shown.stdout if shown.returncode == 0 else None


def requirement_lines(text: str | None) -> list[str]:
    """Requirement specs of a requirements.txt: comments, blanks and pip options dropped."""
    specs = []
    for raw in (text or "").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            specs.append(line)
    return specs


PRERELEASE = re.compile(r"\d(?:[-._]?(?:a|b|rc|alpha|beta|pre|preview|dev)\.?\d*)$", re.I)


def _version_key(name: str) -> tuple:
    """Sort key for release tags: the numbers in the name, then the name (v0.3.10 > v0.3.9)."""
    return (tuple(int(n) for n in re.findall(r"\d+", name)), name)


def _releases(tags: list[str]) -> list[str]:
    """The tags that are not pre-releases (v1.0.0-rc1, 0.4.0b2, 2.0.dev3), when there are any."""
    final = [tag for tag in tags if not PRERELEASE.search(tag)]
    return final or tags


def follow(url: str, pattern: str, where: str) -> tuple[str, str]:
    """(ref, commit) that ``pattern`` names in ``url`` now: a branch or tag name, or a tag
    glob such as ``v*`` (the release line: the highest version that matches)."""
    done = _git(["ls-remote", "--heads", "--tags", url])
    if done.returncode != 0:
        raise SourceUnreachable(
            f"{where}: cannot list the refs of {url} ({done.stderr.strip() or 'ls-remote failed'})."
            " Fix: check the URL and the network, or point it at a reachable mirror"
        )
    refs: dict[str, str] = {}
    for line in done.stdout.splitlines():
        commit, _, name = line.partition("\t")
        if name.endswith("^{}"):  # an annotated tag's commit wins over the tag object
            refs[name[:-3]] = commit
        else:
            refs.setdefault(name, commit)
    if any(ch in pattern for ch in "*?["):
        tags = [n[len("refs/tags/") :] for n in refs if n.startswith("refs/tags/")]
        matching = [t for t in tags if fnmatch.fnmatchcase(t, pattern)]
        if not matching:
            raise GitSourceError(
                f"{where}: no tag of {url} matches {pattern!r}. Fix: correct the pattern "
                f"(tags there: {', '.join(sorted(tags)[-5:]) or 'none'})"
            )
        best = max(_releases(matching), key=_version_key)
        return best, refs[f"refs/tags/{best}"]
    for name in (f"refs/heads/{pattern}", f"refs/tags/{pattern}"):
        if name in refs:
            return pattern, refs[name]
    raise GitSourceError(
        f"{where}: {url} has no branch or tag {pattern!r}. Fix: name an existing branch, tag or "
        "tag pattern (v*)"
    )
