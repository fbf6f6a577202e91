"""Read files of a git repository at a pinned commit, through a local bare cache.

The plan needs ComfyUI's and ComfyUI-Manager's requirements.txt at their pinned commits to
resolve the package layers; it fetches the commit once into ``<cache>/git/<sha256(url)>``.

Every call that talks to a remote is bounded by ``timeout`` (the inventory's
``source_timeout``, 60 s by default): ``ls-remote`` must answer within it, a transfer that
stalls for that long is stopped (``http.lowSpeedTime`` for http(s), ``ServerAliveInterval``
for ssh) and a fetch as a whole gets ten times it. No call prompts for credentials.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import subprocess
from pathlib import Path

COMMIT = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_TIMEOUT = 60.0  # seconds; the inventory's source_timeout
FETCH_FACTOR = 10  # a whole fetch may take this many timeouts (slow links, big repositories)
# user[:password]@ after a scheme, up to the last @ before the path (a password may hold an @)
_USERINFO = re.compile(r"(?<=://)[^/\s]*@")
_SECRET_PARAM = re.compile(
    r"([?&;](?:token|private_token|access_token|oauth_token|password|passwd|secret|key|sig|"
    r"signature)=)[^&;#\s'\"]+",
    re.IGNORECASE,
)


class GitSourceError(Exception):
    """A repository or commit cannot be read; the message names the variable and the fix."""


class SourceUnreachable(GitSourceError):
    """The repository cannot be fetched at all (network, DNS, wrong host): nodes that need it
    are skipped with this reason rather than failing the whole plan."""


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it hidden: ``https://***@host/...``, and
    secret query values (``?token=***``). For every message, log and report line that may
    hold a repository URL."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub("***@", text))


mask_url = redact  # the name the callers know


def network_env(timeout: float, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a git call that talks to a remote: no prompt for credentials, an
    http(s) transfer below 1 byte/s for ``timeout`` seconds stops, ssh gives up connecting
    or on a silent server after ``timeout`` seconds (options added to a GIT_SSH_COMMAND
    already set)."""
    env = dict(os.environ if base is None else base)
    secs = str(max(1, int(timeout)))
    ssh = env.get("GIT_SSH_COMMAND") or "ssh"
    alive = max(1, int(timeout) // 3)
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_HTTP_LOW_SPEED_LIMIT="1",
        GIT_HTTP_LOW_SPEED_TIME=secs,
        GIT_SSH_COMMAND=(
            f"{ssh} -o BatchMode=yes -o ConnectTimeout={secs} "
            f"-o ServerAliveInterval={alive} -o ServerAliveCountMax=3"
        ),
    )
    return env


def _git(
    args: list[str], cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=timeout
    )


def _remote(
    args: list[str], url: str, where: str, timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """git ``args`` against ``url``, within ``timeout`` seconds (SourceUnreachable when not)."""
    secs = max(1, int(timeout))
    argv = ["git", "-c", "http.lowSpeedLimit=1", "-c", f"http.lowSpeedTime={secs}", *args]
    try:
        return subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=network_env(timeout),
        )
    except subprocess.TimeoutExpired as exc:
        raise SourceUnreachable(
            f"{where}: {mask_url(url)} did not answer `git {args[0]}` within {timeout:g} s "
            "(source_timeout). Fix: check the URL and the network, use a reachable mirror, "
            "or raise source_timeout in the inventory"
        ) from exc


def _why(done: subprocess.CompletedProcess[str], default: str) -> str:
    """git's complaint on one line (a reason is one line in tables and reports)."""
    return mask_url(" ".join(done.stderr.split()) or default)


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


def ensure_commit(
    cache_dir: Path, url: str, commit: str, where: str, timeout: float = DEFAULT_TIMEOUT
) -> Path:
    """Fetch ``commit`` of ``url`` into the cache unless it is there; return the bare repo.

    The remote must answer ``ls-remote`` within ``timeout`` seconds (git:// has no timeout
    of its own), then the fetch may take ``FETCH_FACTOR`` times that."""
    repo = cache_repo(cache_dir, url)
    if _git(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo).returncode == 0:
        return repo
    probe = _remote(["ls-remote", "--", url, "HEAD"], url, where, timeout)
    if probe.returncode != 0:
        raise SourceUnreachable(
            f"{where}: cannot fetch {mask_url(url)} ({_why(probe, 'git ls-remote failed')}). "
            f"Fix: check the URL and the network, or point {where} at a reachable mirror"
        )
    long = timeout * FETCH_FACTOR
    fetched = _remote(["fetch", "--quiet", "--depth=1", url, commit], url, where, long, repo)
    if fetched.returncode != 0:  # servers that refuse fetching a commit by SHA
        everything = ["fetch", "--quiet", url, "+refs/*:refs/remotes/src/*"]
        fetched = _remote(everything, url, where, long, repo)
    if fetched.returncode != 0:
        raise SourceUnreachable(
            f"{where}: cannot fetch {mask_url(url)} ({_why(fetched, 'git fetch failed')}). "
            f"Fix: check the URL and the network, or point {where} at a reachable mirror"
        )
    if _git(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo).returncode != 0:
        raise GitSourceError(
            f"{where}: commit {commit} is not in {mask_url(url)}. "
            "Fix: use a commit of that repository"
        )
    return repo


def read_file(
    cache_dir: Path,
    url: str,
    commit: str,
    path: str,
    where: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> str | None:
    """The text of ``path`` at ``commit``, or None when the commit has no such file."""
    repo = ensure_commit(cache_dir, url, commit, where, timeout)
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


def follow(url: str, pattern: str, where: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[str, str]:
    """(ref, commit) that ``pattern`` names in ``url`` now: a branch or tag name, or a tag
    glob such as ``v*`` (the release line: the highest version that matches)."""
    done = _remote(["ls-remote", "--heads", "--tags", "--", url], url, where, timeout)
    if done.returncode != 0:
        raise SourceUnreachable(
            f"{where}: cannot list the refs of {mask_url(url)} "
            f"({_why(done, 'ls-remote failed')}). Fix: check the URL and the network, "
            "or point it at a reachable mirror"
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
                f"{where}: no tag of {mask_url(url)} matches {pattern!r}. Fix: correct the pattern "
                f"(tags there: {', '.join(sorted(tags)[-5:]) or 'none'})"
            )
        best = max(_releases(matching), key=_version_key)
        return best, refs[f"refs/tags/{best}"]
    for name in (f"refs/heads/{pattern}", f"refs/tags/{pattern}"):
        if name in refs:
            return pattern, refs[name]
    raise GitSourceError(
        f"{where}: {mask_url(url)} has no branch or tag {pattern!r}. "
        "Fix: name an existing branch, tag or tag pattern (v*)"
    )
