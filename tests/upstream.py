"""Point a build at mirrors of the real upstream repositories (the upstream tier).

``AICLIPSE_UPSTREAM`` names where the mirrors are: a git base URL (``git://127.0.0.1:9419/``,
``http://host/git/``) or a local directory holding one repository per name. A pinned source
``https://github.com/<owner>/<Name>`` is looked for at ``<base>/<Name>``.

A mirror must hold the pinned commit itself, or a commit standing for it: one whose message
is ``snapshot of <pinned commit>`` (what ``serve-snapshots DEST PORT SNAPSHOT@<commit>``
writes when it turns a snapshot into a served repository). Pins stay the real upstream
commits in the repository; only the test run substitutes the mirror's commit.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


class MirrorError(RuntimeError):
    """A mirror is missing or lacks the pinned commit; the message says what to serve."""


def repo_name(url: str) -> str:
    """``https://github.com/rgthree/rgthree-comfy.git`` -> ``rgthree-comfy``."""
    return url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")


def mirror_url(base: str, url: str) -> str:
    """The mirror of ``url`` under ``base`` (a URL or a directory)."""
    name = repo_name(url)
    if re.match(r"^[a-z][a-z0-9+.-]*://", base):
        return f"{base.rstrip('/')}/{name}"
    folder = Path(base) / name
    if not folder.exists():
        raise MirrorError(f"{url}: no mirror {folder} (AICLIPSE_UPSTREAM={base})")
    return f"file://{folder.resolve()}"


def _git(*args: str, cwd: Path | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise MirrorError(f"git {' '.join(args[:3])}: {done.stderr.strip()[-800:]}")
    return done.stdout


class Mirrors:
    """Maps pinned (url, commit) pairs to (mirror url, mirror commit); clones are cached."""

    def __init__(self, base: str, cache: Path) -> None:
        self.base = base
        self.cache = cache
        self.used: dict[str, tuple[str, str, str]] = {}  # url -> (mirror, pin, commit)

    def _clone(self, mirror: str) -> Path:
        dest = self.cache / hashlib.sha256(mirror.encode()).hexdigest()[:16]
        if dest.exists():
            _git("--git-dir", str(dest), "fetch", "--quiet", "--force", mirror, "+refs/*:refs/*")
        else:
            tmp = dest.with_suffix(".part")
            shutil.rmtree(tmp, ignore_errors=True)
            _git("clone", "--quiet", "--bare", mirror, str(tmp))
            tmp.rename(dest)
        return dest

    def commit(self, url: str, pin: str) -> tuple[str, str]:
        """(mirror url, the mirror's commit for ``pin``); raises MirrorError naming the fix."""
        if not _SHA_RE.match(pin):
            raise MirrorError(f"{url}@{pin}: not a full commit; lock it first (lock.yml)")
        mirror = mirror_url(self.base, url)
        try:
            git_dir = self._clone(mirror)
        except MirrorError as err:
            raise MirrorError(f"{url}: mirror {mirror} cannot be cloned: {err}") from err
        has = subprocess.run(
            ["git", "--git-dir", str(git_dir), "cat-file", "-e", f"{pin}^{{commit}}"],
            capture_output=True,
            check=False,
        )
        if has.returncode == 0:
            found = pin
        else:
            log = _git("--git-dir", str(git_dir), "log", "--all", "--format=%H %s")
            hits = [line.split()[0] for line in log.splitlines() if f"snapshot of {pin}" in line]
            if not hits:
                raise MirrorError(
                    f"{url}@{pin}: the mirror {mirror} has neither this commit nor a "
                    f"'snapshot of {pin}' commit. Fix: serve the pinned commit, e.g. "
                    f"serve-snapshots DEST PORT /work/.mirror/<owner>+{repo_name(url)}/repo@{pin}"
                )
            found = hits[0]
        self.used[url] = (mirror, pin, found)
        return mirror, found


def rewrite_template(src: Path, dest: Path, mirrors: Mirrors) -> list[tuple[str, str]]:
    """Copy a template folder, its node lines pointed at the mirrors; returns (url, pin) pairs.

    ``nodes_manifest.txt`` lines ``<url>@<commit>`` become ``<mirror>@<mirror commit>``; the
    lock is dropped (every pin is a full commit, so the plan needs none).
    """
    shutil.copytree(src, dest, dirs_exist_ok=True)
    (dest / "nodes_manifest.lock").unlink(missing_ok=True)
    manifest = dest / "nodes_manifest.txt"
    pins: list[tuple[str, str]] = []
    lines = []
    for raw in manifest.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            lines.append(raw)
            continue
        url, _, pin = line.rpartition("@")
        mirror, commit = mirrors.commit(url, pin)
        pins.append((url, pin))
        lines.append(f"{mirror}@{commit}")
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return pins
