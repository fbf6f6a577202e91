"""Helpers shared by the test tiers: run ansible-playbook from the repo, free ports, recaps."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def playbook(
    path: str | Path, extra_vars: dict | None = None, *args: str, timeout: int = 1200
) -> subprocess.CompletedProcess[str]:
    """Run ansible-playbook from the repo root with the repo's ansible.cfg; never raises."""
    cmd = [str(VENV_BIN / "ansible-playbook"), str(path)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    cmd += list(args)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines -> {host: {ok: n, changed: n, failed: n, ...}}."""
    hosts = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.M):
        hosts[m[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[2])}
    return hosts


def docker(
    *args: str, check: bool = True, timeout: float = 900, env: dict[str, str] | None = None
) -> str:
    """``docker ARGS`` -> stdout; with ``check`` a failure asserts with docker's stderr.
    ``env``: variables added to docker's environment (secrets for ``-e NAME``, never argv)."""
    done = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env} if env else None,
    )
    if check:
        assert done.returncode == 0, f"docker {' '.join(args[:4])}: {done.stderr[-3000:]}"
    return done.stdout
