"""A fleet on this machine, for molecule/fleet's verify and bench/fleet.py.

The builders are molecule/fleet's containers (each with its own dockerd, on the host's
network, reached by the control node at tcp://127.0.0.1:<port>). This module adds what they
build from and push to: a registry of its own on a free loopback port, ComfyUI and Manager in
git repositories served by ``git daemon``, a wheelhouse with the stand-in torch, the tiny
template, and the OS base (the builders' own Debian 13 image, pushed to that registry; no
image can be pulled here). ``Fleet`` is a context manager that removes all of it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from gitserver import GitServer, make_comfy_sources
from helpers import REPO, VENV_BIN, free_port, playbook
from wheels import make_torch_standin, make_wheel

# molecule/builder_host/vars/main.yml: the image its create.yml debootstraps
BUILDER_IMAGE = "aiclipse-molecule/debian-trixie:python3"
TARGETS = ("cpu-a", "cpu-b")


def docker(*args: str, host: str = "", check: bool = True, timeout: float = 600) -> str:
    env = dict(os.environ, DOCKER_HOST=host) if host else None
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:4])}: {done.stderr[-2000:]}")
    return done.stdout


def _wait_port(listen: str, proc: subprocess.Popen, what: str) -> None:
    host, port = listen.rsplit(":", 1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}")
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {listen}")


class Fleet:
    """Registry, sources and build vars for build.yml against the molecule/fleet builders."""

    def __init__(self, root: Path, inventory: str):
        self.root, self.inventory = Path(root), inventory
        self.listen = f"127.0.0.1:{free_port()}"
        self.vars: dict = {}
        self._registry: subprocess.Popen | None = None
        self._git: GitServer | None = None

    def __enter__(self) -> Fleet:
        self.root.mkdir(parents=True, exist_ok=True)
        data = self.root / "registry"
        config = self.root / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {data}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.listen}\n"
        )
        self._registry = subprocess.Popen(
            ["/usr/bin/docker-registry", "serve", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_port(self.listen, self._registry, "docker-registry")
            commits = make_comfy_sources(self.root / "git")
            self._git = GitServer(self.root / "git").__enter__()
            wheels = self.root / "wheels"
            make_torch_standin(wheels, ("aiclipse-test-dep",))
            make_wheel(wheels, "aiclipse-test-dep", "1.0.0")
            for version in ("2.0.0", "2.0.1"):
                make_wheel(wheels, "aiclipse-test-essential", version)
            templates = self.root / "templates"
            shutil.copytree(REPO / "tests" / "fixtures" / "templates" / "tiny", templates / "tiny")
            os_base = f"{self.listen}/os/debian:trixie"
            docker("tag", BUILDER_IMAGE, os_base)
            docker("push", os_base)
            docker("rmi", os_base)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.vars = {
            "template": "tiny",
            "registry": f"{self.listen}/aiclipse-fleet",
            "os_base": {"source": "image", "image": os_base},
            "image_python_version": "3.13",
            "image_platform": "manylinux_2_41_x86_64",
            "comfyui": {"repo": self._git.url("ComfyUI"), "ref": commits["ComfyUI"]},
            "manager": {
                "repo": self._git.url("ComfyUI-Manager"),
                "ref": commits["ComfyUI-Manager"],
            },
            "gpu_targets": {
                name: {"cuda": "cpu", "torch": "2.13.0", "torch_wheelhouse": str(wheels)}
                for name in TARGETS
            },
            "package_layers": [{"name": "essentials", "specs": ["aiclipse-test-essential==2.0.0"]}],
            "package_layers_exclude": [],
            "build_network": "host",
            "image_jupyter_spec": "",
            "aiclipse_templates_dir": str(templates),
            "aiclipse_build_dir": str(self.root / "build"),
            "aiclipse_cache_dir": str(self.root / "cache"),
            "aiclipse_reports_dir": str(self.root / "reports"),
        }
        return self

    def build(self, extra: dict | None = None, limit: str = "", timeout: int = 1800):
        """build.yml against the fleet's inventory; ``limit``: only these builders."""
        args = ["-i", self.inventory] + (["--limit", f"{limit},localhost"] if limit else [])
        return playbook("build.yml", {**self.vars, **(extra or {})}, *args, timeout=timeout)

    def start(self, extra: dict | None = None) -> subprocess.Popen[str]:
        """build.yml in the background (its output in root/run.log)."""
        cmd = [
            str(VENV_BIN / "ansible-playbook"),
            "build.yml",
            "-i",
            self.inventory,
            "-e",
            json.dumps({**self.vars, **(extra or {})}),
        ]
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
        log = open(self.root / "run.log", "w")  # noqa: SIM115 (the process owns it)
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )

    def report(self) -> dict:
        return json.loads((self.root / "reports" / "latest" / "report.json").read_text())

    def __exit__(self, *exc: object) -> None:
        if self._git is not None:
            self._git.__exit__(None, None, None)
        if self._registry is not None:
            self._registry.terminate()
            self._registry.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
