"""``docker stop`` on a container that is downloading models leaves no secret on disk (issue 13).

The runtime test image (tests/docker/runtime/Dockerfile) on the session's OS base, one named
volume, two model servers on loopback made here (hostile_servers, as in the unit tier):
127.0.0.1 is the token host (AICLIPSE_TOKEN_HOSTS), 127.0.0.2 another host. The container
downloads one gated file (our own client, with the token) and one public file (aria2c) at
about 300 KB/s each; midway ``docker stop`` sends SIGTERM. Then: the container stopped within
its grace time, no file of the container's filesystem or of the volume holds the token, the
``.part`` files (and aria2c's ``.aria2``) are kept, and a second container resumes them.
Not asserted: the downloader's own "stopped by signal" line, because start.sh (bash) exits on
the same SIGTERM and tini then ends the container, which may cut the downloader short.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "runtime"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
import harness
from helpers import free_port
from hostile_servers import Route, Server

CANARY = "hf_canaryCONTAINER_4e2b8d6f10"
RUN_ID = uuid.uuid4().hex[:8]
MODELS = "/workspace/aiclipse/models"


@pytest.fixture(scope="module")
def image(tmp_path_factory, stack):
    """The runtime test image on the OS base the session's prepare.yml run made."""
    tag = f"aiclipse-test/runtime-dl:{RUN_ID}"
    harness.build_image(tag, tmp_path_factory.mktemp("image"), stack["os_base"])
    yield tag
    harness.remove_image(tag)


def start(image: str, name: str, volume: str, manifests: Path) -> None:
    env = {
        "AICLIPSE_LISTEN": "127.0.0.1",
        "COMFY_PORT": str(free_port()),
        "COMFY_INTERNAL_PORT": str(free_port()),
        "SSH_PORT": str(free_port()),
        "JUPYTER_PORT": str(free_port()),
        "FILEBROWSER_PORT": str(free_port()),
        "JUPYTER_TOKEN": uuid.uuid4().hex,
        "HF_TOKEN": CANARY,
        "AICLIPSE_TOKEN_HOSTS": "127.0.0.1=HF_TOKEN",
    }
    argv = ["docker", "run", "-d", "--name", name, "--network", "host",
            "-v", f"{volume}:/workspace", "-v", f"{manifests}:/manifests:ro"]  # fmt: skip
    for key in env:
        argv += ["-e", key]  # values through the environment, not the docker CLI's argv
    done = subprocess.run(
        [*argv, image], env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def files_holding(container: str, needle: bytes) -> list[str]:
    """Every regular file of the container's filesystem (``docker export``) holding needle."""
    proc = subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE)
    found = []
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            if member.isfile() and member.size < 200_000_000:
                handle = tar.extractfile(member)
                if handle is not None and needle in handle.read():
                    found.append(member.name)
    assert proc.wait() == 0
    return found


def volume_files(image: str, volume: str, needle: str) -> tuple[list[str], list[str]]:
    """(files on the volume holding needle, every file under the models folder)."""
    script = (
        f"grep -rl {needle} /workspace || true; echo ::; find {MODELS} -type f | sort"
    )  # fmt: skip
    done = harness.docker(
        "run", "--rm", "-v", f"{volume}:/workspace:ro", "--entrypoint", "sh", image, "-c", script
    )
    holding, _, listing = done.stdout.partition("::")
    return holding.split(), listing.split()


def container_processes(container: str) -> dict[int, tuple[bytes, bytes]]:
    """argv and environment of every process of the container, read from the host's /proc
    (``docker top`` gives their host PIDs)."""
    out = harness.docker("top", container, "-eo", "pid").stdout.split()[1:]
    found = {}
    for pid in filter(str.isdigit, out):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        found[int(pid)] = (argv, environ)
    return found


def test_docker_stop_while_downloading_leaves_no_secret_and_resumes(image, tmp_path):
    home, other = Server("127.0.0.1"), Server("127.0.0.2")
    volume = f"aiclipse-test-dl-{RUN_ID}"
    names = [f"{volume}-0", f"{volume}-1"]
    gated, public = os.urandom(3_000_000), os.urandom(3_000_000)
    try:
        gated_url = home.add("/gated.bin", Route(gated, need_auth=f"Bearer {CANARY}", delay=0.05))
        public_url = other.add("/public.bin", Route(public, delay=0.05))
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        for path in (tmp_path, manifests):
            path.chmod(0o755)  # the runtime user reads the bind mount
        (manifests / "models_manifest.txt").write_text(
            f"vae {gated_url} size={len(gated)}\nvae {public_url} size={len(public)}\n"
        )
        (manifests / "models_manifest.txt").chmod(0o644)
        start(image, names[0], volume, manifests)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            home.sent.get("/gated.bin", 0) < 300_000 or other.sent.get("/public.bin", 0) < 300_000
        ):
            assert harness.running(names[0]), harness.logs(names[0])
            time.sleep(0.2)
        if home.sent.get("/gated.bin", 0) < 300_000 or other.sent.get("/public.bin", 0) < 300_000:
            asked = [(r["host"], r["path"], r["range"], bool(r["auth"]))
                     for r in home.requests + other.requests]  # fmt: skip
            pytest.fail(f"the downloads did not start: {asked}\n{harness.logs(names[0])}")
        processes = container_processes(names[0])
        aria2c = [argv + env for argv, env in processes.values() if b"aria2c" in argv]
        assert aria2c, f"no aria2c running in the container: {processes}"
        assert all(CANARY.encode() not in blob for blob in aria2c)
        stopped = time.monotonic()
        harness.docker("stop", "-t", "30", names[0])
        assert time.monotonic() - stopped < 20, "the container needed the SIGKILL"
        assert CANARY not in harness.logs(names[0])
        assert files_holding(names[0], CANARY.encode()) == []
        holding, listing = volume_files(image, volume, CANARY)
        assert holding == [], holding
        assert f"{MODELS}/vae/public.bin.part" in listing, listing
        assert f"{MODELS}/vae/public.bin.part.aria2" in listing, listing
        assert f"{MODELS}/vae/gated.bin.part" in listing, listing
        asked_before = len(home.requests), len(other.requests)
        for route in (home.routes["/gated.bin"], other.routes["/public.bin"]):
            route.delay = 0.002  # bytes counted are bytes taken, not a socket buffer's worth
        start(image, names[1], volume, manifests)
        harness.wait_log(names[1], r"models: all present", 120)
        for server, before in zip((home, other), asked_before, strict=True):
            starts = [int(m[1]) for r in server.requests[before:]
                      if (m := re.fullmatch(r"bytes=(\d+)-\d*", r["range"] or ""))]  # fmt: skip
            assert any(start >= 300_000 for start in starts), starts  # resumed, not over
        for request in other.requests:
            assert request["auth"] is None, request
        assert all(r["auth"] == f"Bearer {CANARY}" for r in home.requests)
    finally:
        for name in names:
            harness.remove_container(name)
        harness.remove_volume(volume)
        home.close()
        other.close()
