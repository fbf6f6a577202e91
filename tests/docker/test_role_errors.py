"""Bad input to the roles gets one clear error naming the variable, the cause and the fix."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from helpers import free_port, playbook


def _role_play(tmp_path: Path, role: str) -> Path:
    play = tmp_path / "play.yml"
    play.write_text(f"- hosts: localhost\n  connection: local\n  become: true\n  roles: [{role}]\n")
    return play


def test_unknown_engine_source_lists_the_choices(tmp_path):
    run = playbook(_role_play(tmp_path, "builder_host"), {"builder_host_engine_source": "snap"})
    assert run.returncode != 0
    assert "builder_host_engine_source" in run.stdout
    assert "distro, docker-ce" in run.stdout and "snap" in run.stdout


def test_registry_port_held_by_another_program(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    time.sleep(1)
    listen = f"127.0.0.1:{port}"
    cfg = Path(f"/etc/aiclipse/registry-{listen.replace('.', '_').replace(':', '_')}.yml")
    try:
        run = playbook(
            _role_play(tmp_path, "local_registry"),
            {"local_registry_listen": listen, "local_registry_data_dir": str(tmp_path / "data")},
        )
    finally:
        server.terminate()
        server.wait()
        cfg.unlink(missing_ok=True)
    assert run.returncode != 0
    assert f"{listen} is in use by a program that is not a Docker registry" in run.stdout
    assert f"pid={server.pid}" in run.stdout  # ss names the holder
    assert "set local_registry_listen" in run.stdout
