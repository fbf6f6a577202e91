"""The runtime in a real container: start.sh, the services, the models, a restart.

One test image per module (tests/docker/runtime/Dockerfile, the fake ComfyUI cloned at its pin
from a git daemon on 127.0.0.1), one named volume per scenario, model servers on 127.0.0.1.
Containers use host networking so they reach the loopback servers; every service listens on
127.0.0.1 (AICLIPSE_LISTEN) on a free port. Everything created is removed afterwards.

Not exercised here: FileBrowser itself (its binary cannot be downloaded in this environment,
and the test image has none). A stand-in script at the binary's path checks what start.sh
gives it (database on the volume, a bcrypt hash in the environment, no password in argv,
the generated password printed once); FileBrowser's own login is not tested.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "runtime"))
import harness
from gitserver import GitServer, make_repo
from helpers import free_port

ROOT = "/workspace/aiclipse"
CANARIES = {
    "HF_TOKEN": "canary-hf-7f3a9c1e5b",
    "CIVITAI_TOKEN": "canary-civitai-2d8e4f6a0c",
    "JUPYTER_TOKEN": "canary-jupyter-9b1d3f5e7a",
}
RUN_ID = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def image(tmp_path_factory, stack):
    """The runtime test image on the OS base the session's prepare.yml run made."""
    tag = f"aiclipse-test/runtime:{RUN_ID}"
    harness.build_image(tag, tmp_path_factory.mktemp("image"), stack["os_base"])
    yield tag
    harness.remove_image(tag)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    found = []
    for name in ("id_one", "id_two"):
        path = folder / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
            check=True,
        )
        found.append(path)
    return found


def ssh(port: int, *args: str, key: Path | None = None, timeout: float = 20):
    opts = [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=VERBOSE",
        "-p",
        str(port),
    ]
    if key:
        opts += ["-i", str(key)]
    return subprocess.run(
        ["ssh", *opts, "comfy@127.0.0.1", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def host_key(port: int) -> str:
    done = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return done.stdout.split()[-1] if done.stdout.strip() else ""


class Runtime:
    """Start containers of the test image on one volume with one set of ports."""

    def __init__(self, image: str, volume: str, mounts: list[str], env: dict[str, str]):
        self.image, self.volume, self.mounts = image, volume, mounts
        self.ports = {name: free_port() for name in ("COMFY", "SSH", "JUPYTER", "FILEBROWSER")}
        self.env = {
            "AICLIPSE_LISTEN": "127.0.0.1",
            "COMFY_PORT": str(self.ports["COMFY"]),
            "SSH_PORT": str(self.ports["SSH"]),
            "JUPYTER_PORT": str(self.ports["JUPYTER"]),
            "FILEBROWSER_PORT": str(self.ports["FILEBROWSER"]),
            **env,
        }
        self.names: list[str] = []

    def start(self, **overrides: str | None) -> str:
        name = f"{self.volume}-{len(self.names)}"
        self.names.append(name)
        env = {k: v for k, v in {**self.env, **overrides}.items() if v is not None}
        argv = ["run", "-d", "--name", name, "--network", "host", "-v", f"{self.volume}:/workspace"]
        for mount in self.mounts:
            argv += ["-v", mount]
        for key in env:
            argv += ["-e", key]  # values through the environment, not the docker CLI's argv
        done = subprocess.run(
            ["docker", *argv, self.image],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        self.started = time.monotonic()
        return name

    def comfy(self, path: str) -> object:
        status, _, body = harness.http_get(f"http://127.0.0.1:{self.ports['COMFY']}{path}")
        assert status == 200, (path, status, body)
        return json.loads(body)

    def wait_comfy(self, name: str, timeout: float = 120) -> float:
        url = f"http://127.0.0.1:{self.ports['COMFY']}/system_stats"
        return harness.wait_http(url, timeout, name) - self.started

    def close(self) -> None:
        for name in self.names:
            harness.remove_container(name)
        harness.remove_volume(self.volume)


def exec_(name: str, *args: str, user: str = "root") -> str:
    return harness.docker("exec", "-u", user, name, *args).stdout


def volume_checksums(name: str) -> dict[str, str]:
    """sha256 of every file under ROOT except the models themselves (their sidecars count)."""
    out = exec_(
        name,
        "sh",
        "-c",
        f"cd {ROOT} && find . -type f ! -path './models/*/[!.]*' -print0 | xargs -0 -r sha256sum",
    )
    sums = {}
    for line in out.splitlines():
        digest, path = line.split(maxsplit=1)
        sums[path] = digest
    return sums


# --------------------------------------------------------------------------------------------
# Scenario 1: models, ComfyUI, ssh, Jupyter, canaries; then a restart on the same volume.

MODEL_FILES = {
    "/files/base.safetensors": harness.safetensors_bytes(300_000, seed=1),
    "/files/lora.safetensors": harness.safetensors_bytes(50_000, seed=2),
    "/files/upscale.pth": os.urandom(400_000),
}


@pytest.fixture(scope="module")
def scenario(image, keys, tmp_path_factory):
    folder = tmp_path_factory.mktemp("manifests")
    folder.chmod(0o755)  # the runtime user reads the bind mount
    with harness.ModelServer(MODEL_FILES) as server:
        base_sha = hashlib.sha256(MODEL_FILES["/files/base.safetensors"]).hexdigest()
        (folder / "models_manifest.txt").write_text(
            f"checkpoints {server.url('/files/base.safetensors')} sha256={base_sha}\n"
            f"loras {server.url('/files/lora.safetensors')} name=my-lora.safetensors\n"
            f"upscale_models {server.url('/files/upscale.pth')}\n"
        )
        public = "\n".join(key.with_suffix(".pub").read_text().strip() for key in keys)
        runtime = Runtime(
            image,
            f"aiclipse-rt-{RUN_ID}-a",
            [f"{folder}:/manifests:ro"],
            {
                **CANARIES,
                "AICLIPSE_TOKEN_HOSTS": "127.0.0.1=HF_TOKEN",  # the HF token goes to our server
                "PUBLIC_KEY": public,
                "COMFY_ARGS": "--cpu",
            },
        )
        try:
            first = runtime.start()
            cold = runtime.wait_comfy(first)
            yield {"runtime": runtime, "server": server, "first": first, "cold": cold}
        finally:
            runtime.close()


def test_models_land_on_the_volume_and_comfyui_sees_them(scenario):
    runtime, first = scenario["runtime"], scenario["first"]
    listing = exec_(
        first, "sh", "-c", f"cd {ROOT}/models && ls -ln checkpoints loras upscale_models"
    )
    assert "base.safetensors" in listing and "my-lora.safetensors" in listing
    assert "upscale.pth" in listing
    assert all(" 1000 1000 " in line for line in listing.splitlines() if "." in line), listing
    assert ".part" not in exec_(first, "find", f"{ROOT}/models", "-name", "*.part")
    assert runtime.comfy("/models/checkpoints") == ["base.safetensors"]
    assert runtime.comfy("/models/loras") == ["my-lora.safetensors"]
    assert runtime.comfy("/models/upscale_models") == ["upscale.pth"]
    # The token went to the host it belongs to (AICLIPSE_TOKEN_HOSTS maps it to 127.0.0.1).
    auth = {h.get("Authorization") for _, _, h in scenario["server"].requests}
    assert f"Bearer {CANARIES['HF_TOKEN']}" in auth


def test_comfyui_runs_as_the_runtime_user_with_the_expected_args(scenario):
    runtime, first = scenario["runtime"], scenario["first"]
    argv = runtime.comfy("/system_stats")["system"]["argv"]
    assert argv[0] == "main.py"
    assert ["--listen", "127.0.0.1", "--port", runtime.env["COMFY_PORT"]] == argv[1:5]
    assert "--enable-cors-header" in argv and argv[-1] == "--cpu"
    assert f"{ROOT}/.aiclipse/extra_model_paths.yaml" in argv
    script = (
        "import pathlib\n"
        "for p in pathlib.Path('/proc').glob('[0-9]*'):\n"
        "    argv = (p / 'cmdline').read_bytes().split(b'\\0')\n"
        "    if argv[1:2] == [b'main.py']:\n"
        "        print((p / 'status').read_text())\n"
    )
    status = exec_(first, "python3", "-c", script)
    assert re.search(r"PPid:\s+1\n", status), status  # exec'd: tini's own child
    assert re.search(r"Uid:\s+1000\s", status), status
    assert exec_(first, "cat", "/proc/1/cmdline").startswith("/usr/bin/tini")


def test_workflows_copied_and_linked_for_comfyui(scenario):
    first = scenario["first"]
    assert exec_(first, "ls", f"{ROOT}/workflows").split() == ["aiclipse-example.json"]
    link = exec_(first, "readlink", f"{ROOT}/user/default/workflows").strip()
    assert link == "../../workflows"


def test_ssh_is_key_only_and_accepts_each_key(scenario, keys):
    port = scenario["runtime"].ports["SSH"]
    refused = ssh(
        port,
        "-v",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
        "true",
    )
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr, refused.stderr
    offered = re.findall(r"Authentications that can continue: (\S+)", refused.stderr)
    assert offered and all(methods == "publickey" for methods in offered), refused.stderr
    for key in keys:
        done = ssh(port, "id", "-u", key=key)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1000"
    listed = exec_(scenario["first"], "ls", f"{ROOT}/.aiclipse/ssh")
    assert "ssh_host_ed25519_key" in listed
    scenario["host_key"] = host_key(port)
    assert scenario["host_key"]


def test_jupyter_refuses_without_the_token(scenario):
    port = scenario["runtime"].ports["JUPYTER"]
    base = f"http://127.0.0.1:{port}"
    harness.wait_http(f"{base}/api/status?token={CANARIES['JUPYTER_TOKEN']}", 90, scenario["first"])
    assert harness.http_get(f"{base}/api/status")[0] == 403
    assert harness.http_get(f"{base}/api/status?token=wrong")[0] == 403
    status, headers, _ = harness.http_get(f"{base}/lab")
    assert status == 302 and "/login" in headers["Location"]
    good = {"Authorization": f"token {CANARIES['JUPYTER_TOKEN']}"}
    assert harness.http_get(f"{base}/api/status", headers=good)[0] == 200


def test_canaries_appear_in_no_log_and_no_argv(scenario):
    first = scenario["first"]
    logs = harness.logs(first)
    assert "models: all present" in logs
    cmdlines = exec_(first, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "jupyter" in cmdlines and "main.py" in cmdlines and "sshd" in cmdlines
    for value in CANARIES.values():
        assert value not in logs
        assert value not in cmdlines
    config = exec_(
        first, "stat", "-c", "%a %U", f"{ROOT}/.aiclipse/jupyter/jupyter_server_config.json"
    )
    assert config.split() == ["600", "comfy"]


def test_restart_on_the_same_volume(scenario, keys):
    runtime, server, first = scenario["runtime"], scenario["server"], scenario["first"]
    # The user edits a template workflow; the next start must keep the edit.
    exec_(
        first,
        "sh",
        "-c",
        f"echo '{{\"mine\": 1}}' > {ROOT}/workflows/aiclipse-example.json",
        user="1000",
    )
    before = volume_checksums(first)
    # A re-hash would have to read the models: make them unreadable to the runtime user.
    exec_(
        first,
        "sh",
        "-c",
        f"find {ROOT}/models -type f ! -name '.*' ! -name '*.lock' -exec chmod 000 {{}} +",
    )
    stopped = time.monotonic()
    harness.docker("stop", "-t", "20", first)
    stop_seconds = time.monotonic() - stopped
    state = json.loads(harness.docker("inspect", first).stdout)[0]["State"]
    assert state["ExitCode"] == 0 and stop_seconds < 10, (state, stop_seconds)
    assert "received signal 15" in harness.logs(first)  # SIGTERM reached ComfyUI

    sent, requests = server.total_sent, len(server.requests)
    second = runtime.start(PUBLIC_KEY=None)  # same volume, no key this time
    warm = runtime.wait_comfy(second)
    logs = harness.logs(second)
    assert server.total_sent == sent and len(server.requests) == requests  # 0 bytes, 0 requests
    assert "3 present, 0 to download" in logs and "models: all present" in logs, logs
    assert runtime.comfy("/models/checkpoints") == ["base.safetensors"]
    after = volume_checksums(second)
    assert after == before  # config, sidecars, host keys, token files, the user's workflow
    assert "ssh: off" in logs and not port_open(runtime.ports["SSH"])
    assert "1 already there (kept)" in logs
    for value in CANARIES.values():
        assert value not in logs
    print(f"cold start to ComfyUI: {scenario['cold']:.1f}s, warm: {warm:.1f}s")
    harness.docker("stop", "-t", "20", second)

    # With a key again: the host key generated at the first start is still the one offered.
    third = runtime.start()
    runtime.wait_comfy(third)
    deadline = time.monotonic() + 20
    while not port_open(runtime.ports["SSH"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host_key(runtime.ports["SSH"]) == scenario["host_key"]
    assert volume_checksums(third) == before
    exec_(third, "sh", "-c", f"chmod -R u+rw {ROOT}/models")


# --------------------------------------------------------------------------------------------
# Scenario 2: models in the background, a generated Jupyter token, runtime nodes, FileBrowser's
# code path (stand-in binary).

FAKE_FILEBROWSER = """#!/bin/sh
# Stand-in for FileBrowser: records what start.sh gave it, makes the database, waits.
{ echo "uid=$(id -u)"; echo "FB_USERNAME=$FB_USERNAME"; echo "FB_PASSWORD=$FB_PASSWORD";
  printf 'arg=%s\\n' "$@"; } > /tmp/fake-filebrowser.txt
touch "$2"
exec sleep 100000
"""


DONE = r"models: done(,| with)"


def test_async_models_generated_secrets_nodes_and_filebrowser(image, tmp_path):
    slow = {"/files/slow.safetensors": harness.safetensors_bytes(1_000_000, seed=3)}  # 4 MB
    node_src = tmp_path / "node-src"
    node_src.mkdir()
    (node_src / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    _, node_commit = make_repo(node_src, tmp_path / "git" / "MyNode")
    (tmp_path / "manifests").mkdir()
    for path in (tmp_path, tmp_path / "manifests"):
        path.chmod(0o755)  # the runtime user reads the bind mounts
    fake = tmp_path / "filebrowser"
    fake.write_text(FAKE_FILEBROWSER)
    fake.chmod(0o755)
    with (
        harness.ModelServer(slow, rate=1_000_000) as server,
        GitServer(tmp_path / "git") as git,
    ):
        (tmp_path / "manifests" / "models_manifest.txt").write_text(
            f"checkpoints {server.url('/files/slow.safetensors')}\n"
        )
        (tmp_path / "nodes.txt").write_text(f"{git.url('MyNode')}@{node_commit}\n")
        (tmp_path / "manifests" / "models_manifest.txt").chmod(0o644)
        runtime = Runtime(
            image,
            f"aiclipse-rt-{RUN_ID}-b",
            [
                f"{tmp_path / 'manifests'}:/manifests:ro",
                f"{tmp_path / 'nodes.txt'}:/nodes/nodes_manifest.txt:ro",
                f"{fake}:/usr/local/bin/filebrowser:ro",
            ],
            {
                "MODELS_ASYNC": "1",
                "NODES_INSTALL": "1",
                "NODES_MANIFEST": "/nodes/nodes_manifest.txt",
            },
        )
        try:
            first = runtime.start()
            runtime.wait_comfy(first)
            assert not re.search(DONE, harness.logs(first))  # ComfyUI answers before the models
            logs = harness.wait_log(first, DONE, 60)
            assert "models: done, all present" in logs
            assert runtime.comfy("/models/checkpoints") == ["slow.safetensors"]

            token = re.search(r"generated token \(shown once, kept in \S+\): (\S+)", logs)[1]
            base = f"http://127.0.0.1:{runtime.ports['JUPYTER']}/api/status"
            harness.wait_http(f"{base}?token={token}", 90, first)
            assert harness.http_get(base)[0] == 403

            head = exec_(
                first, "git", "-C", f"{ROOT}/custom_nodes/MyNode", "rev-parse", "HEAD", user="1000"
            )
            assert head.strip() == node_commit and "[installed] MyNode" in logs
            owner = exec_(first, "stat", "-c", "%u", f"{ROOT}/custom_nodes/MyNode/__init__.py")
            assert owner.strip() == "1000"

            password = re.search(r"generated password \(shown once\): (\S+)", logs)[1]
            record = exec_(first, "cat", "/tmp/fake-filebrowser.txt")
            assert "uid=1000" in record and "FB_USERNAME=admin" in record
            assert re.search(r"FB_PASSWORD=\$2[aby]\$12\$", record), record
            assert f"arg={ROOT}/.aiclipse/filebrowser/filebrowser.db" in record
            assert password not in record
            cmdlines = exec_(first, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
            assert token not in cmdlines and password not in cmdlines
            assert logs.count(token) == 1 and logs.count(password) == 1  # printed once

            harness.docker("stop", "-t", "20", first)
            second = runtime.start()
            runtime.wait_comfy(second)
            logs = harness.wait_log(second, DONE, 30)
            assert token not in logs and password not in logs  # not printed again
            assert "token generated at first start" in logs
            assert "credentials as set at first start" in logs
            harness.wait_http(f"{base}?token={token}", 90, second)  # the same token still works
        finally:
            runtime.close()
