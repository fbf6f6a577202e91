"""Git fixtures for tests: turn a folder into a git repository and serve it on loopback.

``make_repo`` gives the same commit for the same files on any machine (fixed author, dates
and branch name), so a Docker build that clones it at its pin keeps its cache between runs.
``GitServer`` runs ``git daemon`` on 127.0.0.1 (read-only, every repository under its root),
so clients do a real clone over the network: ``git clone git://127.0.0.1:<port>/<name>``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

FIXED_ENV = {
    "GIT_AUTHOR_NAME": "aiclipse tests",
    "GIT_AUTHOR_EMAIL": "tests@aiclipse.invalid",
    "GIT_COMMITTER_NAME": "aiclipse tests",
    "GIT_COMMITTER_EMAIL": "tests@aiclipse.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+0000",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".git")


def git(repo: str | Path, *args: str) -> str:
    """Run git in ``repo`` with the fixed identity and dates; return stdout (stripped)."""
    done = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false", *args],
        cwd=repo,
        env={**os.environ, **FIXED_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def make_repo(src_dir: str | Path, dest: str | Path, branch: str = "main") -> tuple[Path, str]:
    """Copy ``src_dir`` to ``dest`` (a new folder), commit it all; return (dest, commit)."""
    dest = Path(dest)
    shutil.copytree(src_dir, dest, ignore=_IGNORE)
    git(dest, "init", "-q", "-b", branch)
    return dest, commit_all(dest, "initial")


def commit_all(repo: str | Path, message: str) -> str:
    """Commit every change in ``repo``'s working tree; return the new commit."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class GitServer:
    """``git daemon`` serving every repository under ``root`` at git://host:port/<name>.

    Use as a context manager; the daemon is stopped (by its own pid) on exit.
    """

    def __init__(self, root: str | Path, host: str = "127.0.0.1"):
        self.root = Path(root).resolve()
        self.host = host
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"git://{self.host}:{self.port}/{name}"

    def __enter__(self) -> GitServer:
        self.port = _free_port(self.host)
        self._proc = subprocess.Popen(
            [
                "git",
                "daemon",
                f"--listen={self.host}",
                f"--port={self.port}",
                f"--base-path={self.root}",
                "--export-all",
                "--reuseaddr",
                "--informative-errors",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"git daemon exited {self._proc.returncode}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError(f"git daemon did not listen on {self.host}:{self.port}")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def make_comfy_sources(root: str | Path) -> dict[str, str]:
    """``root/ComfyUI`` (the fake of tests/fixtures/comfyui) and ``root/ComfyUI-Manager`` (an
    empty node pack), committed; their commits by name. Serve ``root`` with GitServer."""
    root = Path(root)
    fixture = Path(__file__).resolve().parent / "fixtures" / "comfyui"
    _, comfy = make_repo(fixture, root / "ComfyUI")
    manager = root / "ComfyUI-Manager"
    manager.mkdir(parents=True)
    (manager / "requirements.txt").write_text("# nothing\n")
    (manager / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    git(manager, "init", "-q", "-b", "main")
    return {"ComfyUI": comfy, "ComfyUI-Manager": commit_all(manager, "initial")}


def make_plan_sources(root: str | Path, comfy_requirements: str) -> tuple[str, str]:
    """A ComfyUI whose requirements.txt is ``comfy_requirements`` and a Manager with none,
    as plain repositories under ``root`` (``root/comfyui``, ``root/manager``; file:// is
    enough for a plan); their commits."""
    root = Path(root)
    commits = []
    for name, text in (("comfyui", comfy_requirements), ("manager", "# none\n")):
        src = root / f"{name}-src"
        src.mkdir(parents=True)
        (src / "requirements.txt").write_text(text)
        commits.append(make_repo(src, root / name)[1])
    return commits[0], commits[1]


def make_empty_template(templates: str | Path, name: str = "tiny") -> Path:
    """A template with no node, model or workflow, for every target."""
    tpl = Path(templates) / name
    (tpl / "workflows").mkdir(parents=True)
    (tpl / "template.yml").write_text(f"description: {name}\ngpu_targets: all\n")
    (tpl / "models_manifest.txt").write_text("")
    (tpl / "nodes_manifest.txt").write_text("")
    return tpl
