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
STATE = "/workspace/.aiclipse"  # beside ROOT: FileBrowser serves ROOT
CANARIES = {
    "HF_TOKEN": "canary-hf-7f3a9c1e5b",
    "CIVITAI_TOKEN": "canary-civitai-2d8e4f6a0c",
    "JUPYTER_TOKEN": "canary-jupyter-9b1d3f5e7a",
    "COMFY_TOKEN": "canary-comfy-4c6e8a0b2d",
    "FILEBROWSER_PASSWORD": "canary-filebrowser-1a3c5e7",
}
POD = "testpod1"  # RUNPOD_POD_ID: its proxy origin is https://testpod1-<port>.proxy.runpod.net
OK_ORIGIN = "https://ok.example"  # AICLIPSE_ALLOWED_ORIGINS
EVIL = "https://evil.example"
RUN_ID = uuid.uuid4().hex[:8]
COMFY_GENERATED = r"comfyui: proxy on .* generated token \(shown once, kept in \S+\): ([\w-]+)"
JUPYTER_GENERATED = r"jupyter: port \d+, generated token \(shown once, kept in \S+\): (\S+)"


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
        names = ("COMFY", "COMFY_INTERNAL", "SSH", "JUPYTER", "FILEBROWSER")
        self.ports = {name: free_port() for name in names}
        self.env = {
            "AICLIPSE_LISTEN": "127.0.0.1",
            "COMFY_PORT": str(self.ports["COMFY"]),
            "COMFY_INTERNAL_PORT": str(self.ports["COMFY_INTERNAL"]),
            "SSH_PORT": str(self.ports["SSH"]),
            "JUPYTER_PORT": str(self.ports["JUPYTER"]),
            "FILEBROWSER_PORT": str(self.ports["FILEBROWSER"]),
            **env,
        }
        self.names: list[str] = []
        self.token = env.get("COMFY_TOKEN", "")  # the proxy's; a generated one is read from logs

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

    @property
    def auth(self) -> dict[str, str]:
        return harness.basic_auth("comfy", self.token)

    def comfy(self, path: str) -> object:
        url = f"http://127.0.0.1:{self.ports['COMFY']}{path}"
        status, _, body = harness.http_get(url, headers=self.auth)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def wait_comfy(self, name: str, timeout: float = 120) -> float:
        url = f"http://127.0.0.1:{self.ports['COMFY']}/system_stats"
        if not self.token:
            text = harness.wait_log(name, r"comfyui: proxy on", timeout)
            self.token = re.search(COMFY_GENERATED, text)[1]
        return harness.wait_http(url, timeout, name, headers=self.auth) - self.started

    def close(self) -> None:
        for name in self.names:
            harness.remove_container(name)
        harness.remove_volume(self.volume)


def exec_(name: str, *args: str, user: str = "root") -> str:
    return harness.docker("exec", "-u", user, name, *args).stdout


def volume_checksums(name: str) -> dict[str, str]:
    """sha256 of every file under ROOT and STATE except the models themselves (their sidecars
    count)."""
    out = exec_(
        name,
        "sh",
        "-c",
        f"cd /workspace && find {ROOT.split('/')[-1]} {STATE.split('/')[-1]} -type f"
        f" ! -path '{ROOT.split('/')[-1]}/models/*/[!.]*' -print0 | xargs -0 -r sha256sum",
    )
    sums = {}
    for line in out.splitlines():
        digest, path = line.split(maxsplit=1)
        sums[path] = digest
    return sums


# --------------------------------------------------------------------------------------------
# Scenario 1: models, ComfyUI, ssh, Jupyter, canaries; then a restart on the same volume.

FAKE_FILEBROWSER = """#!/bin/sh
# Stand-in for FileBrowser: records what start.sh gave it, makes the database, waits.
{ echo "uid=$(id -u)"; echo "FB_USERNAME=$FB_USERNAME"; echo "FB_PASSWORD=$FB_PASSWORD";
  printf 'arg=%s\\n' "$@"; } > /tmp/fake-filebrowser.txt
touch "$2"
exec sleep 100000
"""


MODEL_FILES = {
    "/files/base.safetensors": harness.safetensors_bytes(300_000, seed=1),
    "/files/lora.safetensors": harness.safetensors_bytes(50_000, seed=2),
    "/files/upscale.pth": os.urandom(400_000),
}


@pytest.fixture(scope="module")
def fake_filebrowser(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("filebrowser")
    folder.chmod(0o755)
    fake = folder / "filebrowser"
    fake.write_text(FAKE_FILEBROWSER)
    fake.chmod(0o755)
    return fake


@pytest.fixture(scope="module")
def scenario(image, keys, fake_filebrowser, tmp_path_factory):
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
            [f"{folder}:/manifests:ro", f"{fake_filebrowser}:/usr/local/bin/filebrowser:ro"],
            {
                **CANARIES,
                "AICLIPSE_TOKEN_HOSTS": "127.0.0.1=HF_TOKEN",  # the HF token goes to our server
                "PUBLIC_KEY": public,
                "COMFY_ARGS": "--cpu",
                "RUNPOD_POD_ID": POD,
                "AICLIPSE_ALLOWED_ORIGINS": OK_ORIGIN,
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
    # the downloader's own user owns what it wrote, in the runtime user's group (ComfyUI reads)
    models_uid = exec_(first, "id", "-u", "aiclipse-models").strip()
    assert models_uid not in ("0", "1000"), models_uid
    lines = [line for line in listing.splitlines() if "." in line]
    assert lines and all(f" {models_uid} 1000 " in line for line in lines), listing
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
    # ComfyUI itself on loopback, behind the proxy; no CORS of its own (the proxy's)
    assert ["--listen", "127.0.0.1", "--port", runtime.env["COMFY_INTERNAL_PORT"]] == argv[1:5]
    assert "--enable-cors-header" not in argv and argv[-1] == "--cpu"
    assert f"{STATE}/extra_model_paths.yaml" in argv
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
    listed = exec_(scenario["first"], "ls", f"{STATE}/ssh")
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
    config = exec_(first, "stat", "-c", "%a %U", f"{STATE}/jupyter/jupyter_server_config.json")
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

            token = re.search(JUPYTER_GENERATED, logs)[1]
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
            assert f"arg={STATE}/filebrowser/filebrowser.db" in record
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


# --------------------------------------------------------------------------------------------
# Issue 14: the runtime under attack. Each test names the attack that broke it before.

ENVIRON_SCAN = r"""
import json, os, pathlib
me = os.getpid()
found = {}
for proc in pathlib.Path('/proc').glob('[0-9]*'):
    pid = int(proc.name)
    if pid in (1, me):  # tini (docker's own copy of the config) and this scan
        continue
    try:
        environ = (proc / 'environ').read_bytes().decode(errors='replace')
        comm = (proc / 'comm').read_text().strip()
        uid = (proc / 'status').read_text().split('Uid:')[1].split()[0]
    except OSError:
        continue
    found[f'{pid} {comm} uid={uid}'] = environ
print(json.dumps(found))
"""


def test_no_secret_in_any_process_environment(scenario):
    """Attack: a custom node or Jupyter kernel read HF_TOKEN, CIVITAI_TOKEN, JUPYTER_PASSWORD,
    FILEBROWSER_PASSWORD from /proc/<pid>/environ of ComfyUI, jupyter-lab, FileBrowser (same
    uid), and a root `bash start.sh` stayed behind holding them all."""
    first = scenario["runtime"].names[-1]  # the one still running (after the restarts)
    # Each uid reads its own processes (docker exec has no CAP_SYS_PTRACE for other uids).
    environs = {}
    for user in ("0", "1000", "caddy"):
        environs.update(json.loads(exec_(first, "python3", "-c", ENVIRON_SCAN, user=user)))
    comms = " ".join(environs)
    for service in ("python", "jupyter-lab", "caddy", "sshd", "sleep"):  # sleep: FileBrowser
        assert service in comms, environs.keys()
    assert " bash " not in f" {comms} ".replace(" uid=", " "), environs.keys()  # none left
    for where, environ in environs.items():
        for name, value in CANARIES.items():
            assert value not in environ, f"{name} in the environment of {where}"
    # tini's (PID 1) is docker's container config: root's, unreadable to the runtime user.
    denied = harness.docker("exec", "-u", "1000", first, "cat", "/proc/1/environ", check=False)
    assert denied.returncode != 0 and CANARIES["HF_TOKEN"] not in denied.stdout


PROC_SCAN = r"""
import json, os, pathlib, re, sys
needles = [n.encode() for n in sys.argv[1:]]
me = os.getpid()
found = {}
for proc in pathlib.Path('/proc').glob('[0-9]*'):
    pid = int(proc.name)
    if pid == me:
        continue
    entry = {}
    try:
        entry['cmd'] = (proc / 'cmdline').read_bytes().replace(b'\0', b' ').decode()
        entry['uid'] = (proc / 'status').read_text().split('Uid:')[1].split()[0]
    except OSError:
        continue
    blobs = [entry['cmd'].encode()]
    try:
        blobs.append((proc / 'environ').read_bytes())
        entry['environ'] = 'read'
    except OSError as err:
        entry['environ'] = type(err).__name__
    try:
        with open(proc / 'maps') as maps, open(proc / 'mem', 'rb') as mem:
            for line in maps:
                m = re.match(r'([0-9a-f]+)-([0-9a-f]+) rw', line)
                if m:
                    start, end = int(m[1], 16), int(m[2], 16)
                    try:
                        mem.seek(start)
                        blobs.append(mem.read(min(end - start, 64 << 20)))
                    except OSError:
                        pass
        entry['mem'] = 'read'
    except OSError as err:
        entry['mem'] = type(err).__name__
    entry['hits'] = [n.decode() for n in needles if any(n in blob for blob in blobs)]
    found[pid] = entry
print(json.dumps(found))
"""


def test_the_downloader_tokens_are_unreachable_from_comfyuis_uid(image, tmp_path):
    """Attack: with MODELS_ASYNC=1 the downloader (which holds HF_TOKEN and CIVITAI_TOKEN)
    ran as ComfyUI's uid beside it, so a custom node read the tokens from
    /proc/<downloader>/environ (or its memory). As ComfyUI's uid, while the download runs,
    every other process's cmdline, environ and memory is read: no token anywhere."""
    slow = {"/files/gated.safetensors": harness.safetensors_bytes(750_000, seed=4)}  # 3 MB
    (tmp_path / "manifests").mkdir()
    for path in (tmp_path, tmp_path / "manifests"):
        path.chmod(0o755)
    tokens = {"HF_TOKEN": CANARIES["HF_TOKEN"], "CIVITAI_TOKEN": CANARIES["CIVITAI_TOKEN"]}
    with harness.ModelServer(slow, rate=200_000) as server:
        manifest = tmp_path / "manifests" / "models_manifest.txt"
        manifest.write_text(f"checkpoints {server.url('/files/gated.safetensors')}\n")
        manifest.chmod(0o644)
        runtime = Runtime(
            image,
            f"aiclipse-rt-{RUN_ID}-dl",
            [f"{tmp_path / 'manifests'}:/manifests:ro"],
            {
                **tokens,
                "AICLIPSE_TOKEN_HOSTS": "127.0.0.1=HF_TOKEN",  # the HF token goes to our server
                "MODELS_ASYNC": "1",
                "JUPYTER_ENABLE": "0",
                "COMFY_TOKEN": CANARIES["COMFY_TOKEN"],
            },
        )
        try:
            first = runtime.start()
            runtime.wait_comfy(first)
            deadline = time.monotonic() + 60
            while server.total_sent < 100_000 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not re.search(DONE, harness.logs(first)), "the download ended before the scan"
            scan = json.loads(
                exec_(first, "python3", "-c", PROC_SCAN, *tokens.values(), user="1000")
            )
            downloaders = [e for e in scan.values() if "download_models.py" in e["cmd"]]
            assert downloaders, scan  # it runs, and its uid is not ComfyUI's
            assert all(e["uid"] != "1000" for e in downloaders), downloaders
            assert all(e["environ"] == "PermissionError" for e in downloaders), downloaders
            comfy = [e for e in scan.values() if "main.py" in e["cmd"]]
            assert comfy and comfy[0]["uid"] == "1000" and comfy[0]["environ"] == "read", scan
            hits = {pid: e for pid, e in scan.items() if e["hits"]}
            assert hits == {}, hits
            # the downloader did hold the token: it reached the server it belongs to
            auth = {h.get("Authorization") for _, _, h in server.requests}
            assert f"Bearer {CANARIES['HF_TOKEN']}" in auth
            logs = harness.wait_log(first, DONE, 60)
            assert "models: done, all present" in logs and "as aiclipse-models" in logs, logs
            assert runtime.comfy("/models/checkpoints") == ["gated.safetensors"]  # ComfyUI reads
        finally:
            runtime.close()


def test_comfyui_only_through_the_authenticating_proxy(scenario):
    """Attack: ComfyUI answered anyone with its URL, and `--enable-cors-header *` let any web
    page drive it (queue prompts, upload, install nodes through Manager)."""
    runtime = scenario["runtime"]
    base = f"http://127.0.0.1:{runtime.ports['COMFY']}"
    for path in ("/", "/system_stats", "/object_info", "/api/system_stats"):
        assert harness.http_get(base + path)[0] == 401, path
    wrong = harness.basic_auth("comfy", "wrong-token-000000")
    assert harness.http_get(base + "/system_stats", headers=wrong)[0] == 401
    good = runtime.auth
    for origin in (
        EVIL,
        "null",
        f"{OK_ORIGIN}.evil.example",
        f"http://{POD}-8188.proxy.runpod.net",
    ):
        status, headers, _ = harness.http_get(
            base + "/system_stats", headers={**good, "Origin": origin}
        )
        assert status == 403 and "Access-Control-Allow-Origin" not in headers, origin
    pod_origin = f"https://{POD}-{runtime.ports['COMFY']}.proxy.runpod.net"
    for origin in (pod_origin, OK_ORIGIN):
        status, headers, _ = harness.http_get(
            base + "/system_stats", headers={**good, "Origin": origin}
        )
        assert status == 200 and headers["Access-Control-Allow-Origin"] == origin
    # a WebSocket handshake is checked the same way (the proxy answers before ComfyUI)
    assert websocket(runtime.ports["COMFY"], "/ws", EVIL, good).startswith("HTTP/1.1 403")
    assert websocket(runtime.ports["COMFY"], "/ws", EVIL, {}).startswith("HTTP/1.1 403")
    assert websocket(runtime.ports["COMFY"], "/ws", pod_origin, {}).startswith("HTTP/1.1 401")
    # the proxy's config and token are unreadable to the runtime user (ComfyUI's nodes)
    denied = harness.docker(
        "exec", "-u", "1000", scenario["first"], "cat", f"{STATE}/proxy/Caddyfile",
        check=False,
    )  # fmt: skip
    assert denied.returncode != 0


def websocket(
    port: int, path: str, origin: str | None, headers: dict[str, str], query: str = ""
) -> str:
    """The status line and headers of a WebSocket handshake to 127.0.0.1:port (no Origin
    header when ``origin`` is None)."""
    lines = [
        f"GET {path}{query} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *([f"Origin: {origin}"] if origin is not None else []),
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.decode(errors="replace")


def curl_status(url: str, *headers: str, method: str = "GET") -> int:
    """The status curl gets for ``url`` with these request headers (``Name: value``)."""
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "--max-time", "10"]
    for header in headers:
        argv += ["-H", header]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=30, check=False)
    return int(done.stdout or 0)


def test_the_proxy_refuses_cross_site_fetch_metadata_without_an_allowed_origin(scenario):
    """Attack: the proxy decided on ``Origin`` alone, and a browser sends none on a cross-site
    ``<img>``/``<script>``/no-cors GET or a WebSocket from some clients: with the user's basic
    auth remembered by the browser, another site (or another pod's page: every RunPod proxy
    origin is one site, proxy.runpod.net) reached ComfyUI. ``Sec-Fetch-Site`` says where a
    request comes from on every browser request."""
    runtime = scenario["runtime"]
    port = runtime.ports["COMFY"]
    url = f"http://127.0.0.1:{port}/system_stats"
    auth = f"Authorization: {runtime.auth['Authorization']}"
    pod_origin = f"https://{POD}-{port}.proxy.runpod.net"
    other_pod = f"https://otherpod-{port}.proxy.runpod.net"
    refused = [
        ("Sec-Fetch-Site: cross-site",),
        ("Sec-Fetch-Site: same-site",),
        ("Sec-Fetch-Site: CROSS-SITE",),
        ("Sec-Fetch-Site: same-site", f"Origin: {other_pod}"),
        ("Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: no-cors", "Sec-Fetch-Dest: image"),
        # a navigation into a frame (clickjacking) is not a top-level one
        ("Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: iframe"),
    ]
    for headers in refused:
        assert curl_status(url, auth, *headers) == 403, headers
    # a cross-site form POST as a top-level navigation
    post = ("Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: document")
    assert curl_status(f"http://127.0.0.1:{port}/prompt", auth, *post, method="POST") == 403
    allowed = [
        (),
        ("Sec-Fetch-Site: same-origin",),
        ("Sec-Fetch-Site: none",),  # typed in, a bookmark
        ("Sec-Fetch-Site: cross-site", f"Origin: {pod_origin}"),
        ("Sec-Fetch-Site: cross-site", f"Origin: {OK_ORIGIN}"),
        # a link to the UI from another site (RunPod's console "Connect"): a top-level GET
        ("Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: document"),
    ]
    for headers in allowed:
        assert curl_status(url, auth, *headers) == 200, headers
        assert curl_status(url, *headers) == 401, headers  # and still the credential
    # WebSocket handshakes, checked the same way, before authentication
    cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "websocket"}
    for origin in (None, EVIL):
        answer = websocket(port, "/ws", origin, {**cross, **runtime.auth})
        assert answer.startswith("HTTP/1.1 403"), (origin, answer)
    answer = websocket(port, "/ws", None, {**cross, "Sec-Fetch-Site": "same-site"})
    assert answer.startswith("HTTP/1.1 403"), answer
    answer = websocket(port, "/ws", pod_origin, cross)
    assert answer.startswith("HTTP/1.1 401"), answer  # allowed origin: on to the credential


FILES_SCAN = r"""
import json, os, sys
root, needles = sys.argv[1], [n.encode() for n in sys.argv[2:]]
hits = []
for folder, dirs, files in os.walk(root, followlinks=True):
    for name in dirs + files:
        if name.startswith('.aiclipse'):
            hits.append(os.path.join(folder, name))
    for name in files:
        path = os.path.join(folder, name)
        try:
            with open(path, 'rb') as handle:
                data = handle.read(100_000_000)
        except OSError:
            continue
        hits += [f'{path}: {n.decode()}' for n in needles if n in data]
print(json.dumps(hits))
"""


def test_filebrowser_can_reach_no_credential(scenario):
    """Attack: FileBrowser's root was the data folder, which held ``.aiclipse``: Jupyter's token
    and config (the runtime user's, so FileBrowser's too), FileBrowser's own database (its
    session key). FileBrowser serves only what is under its ``-r`` root and can read as its uid:
    as that uid, every file under that root is read and none holds a credential."""
    first = scenario["runtime"].names[-1]
    harness.wait_log(first, r"filebrowser: port", 60)
    args = re.findall(r"^arg=(.*)$", exec_(first, "cat", "/tmp/fake-filebrowser.txt"), re.M)
    root, database = args[args.index("-r") + 1], args[args.index("-d") + 1]
    needles = [*CANARIES.values(), "PRIVATE KEY", "hashed_password", '"token"']
    hits = json.loads(exec_(first, "python3", "-c", FILES_SCAN, root, *needles, user="1000"))
    assert hits == [], hits
    assert root == ROOT and database == f"{STATE}/filebrowser/filebrowser.db", args
    assert not database.startswith(root + "/")
    # the scan does find them where they are (the test can see a credential when one is there)
    found = json.loads(exec_(first, "python3", "-c", FILES_SCAN, STATE, *needles, user="1000"))
    assert any(CANARIES["JUPYTER_TOKEN"] in hit for hit in found), found


CADDY_ENV = r"""
import json, os, pathlib
for proc in pathlib.Path('/proc').glob('[0-9]*'):
    try:
        if (proc / 'comm').read_text().strip() == 'caddy':
            environ = (proc / 'environ').read_bytes().split(b'\0')
            env = dict(e.decode().split('=', 1) for e in environ if b'=' in e)
            found = {k: env.get(k, '') for k in ('HOME', 'XDG_CONFIG_HOME', 'XDG_DATA_HOME')}
            found['stat'] = {k: os.stat(v).st_mode & 0o7777 if os.path.exists(v) else None
                             for k, v in found.items()}
            print(json.dumps(found))
    except OSError:
        pass
"""


def test_the_proxy_keeps_its_folders_private(scenario):
    """Attack: Caddy's HOME and XDG data/config folders were /tmp/caddy-*: anyone in the
    container (ComfyUI's nodes) could make them first, with content of their choosing (a
    config Caddy autosaves and reads, certificates), or read what Caddy writes there."""
    first = scenario["runtime"].names[-1]
    lines = exec_(first, "python3", "-c", CADDY_ENV, user="caddy").split("\n")
    found = json.loads(lines[0])
    home = found["HOME"]
    assert home and not home.startswith("/tmp"), found
    for key in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        assert found[key].startswith(home + "/"), found
    owner = exec_(first, "stat", "-c", "%a %U %G", home).split()
    assert owner == ["700", "caddy", "caddy"], owner
    parent = exec_(first, "stat", "-c", "%U %a", os.path.dirname(home)).split()
    assert parent[0] == "root" and not int(parent[1], 8) & 0o022, parent
    assert "caddy" not in exec_(first, "ls", "-a", "/tmp")


def test_jupyter_refuses_cross_site_websockets_and_sets_safe_cookies(scenario):
    """Attack: with allow_origin '*', a page on another origin with the user's cookie opened a
    terminal WebSocket and ran `id` (101 Switching Protocols); the cookie had no SameSite."""
    runtime = scenario["runtime"]
    port = runtime.ports["JUPYTER"]
    token = CANARIES["JUPYTER_TOKEN"]
    harness.wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", 90, scenario["first"])
    pod_origin = f"https://{POD}-{port}.proxy.runpod.net"
    # The login cookie (Jupyter skips the origin check for a token-authenticated request: a
    # cross-site page has the user's cookie, not the token).
    first = websocket(port, "/api/events/subscribe", pod_origin, {}, f"?token={token}")
    cookie = re.search(r"Set-Cookie: (username-[^=]+=[^;]+)", first)[1]
    evil = websocket(port, "/api/events/subscribe", EVIL, {"Cookie": cookie})
    assert evil.startswith("HTTP/1.1 403"), evil
    for origin in (pod_origin, OK_ORIGIN, f"http://127.0.0.1:{port}"):
        good = websocket(port, "/api/events/subscribe", origin, {"Cookie": cookie})
        assert good.startswith("HTTP/1.1 101"), (origin, good)
    status, headers, _ = harness.http_get(f"http://127.0.0.1:{port}/login")
    cookies = headers.get_all("Set-Cookie") or []
    assert status == 200 and cookies, headers
    for cookie in cookies:  # behind RunPod's https proxy: Secure too
        assert "samesite=lax" in cookie.lower() and "secure" in cookie.lower(), cookie
    status, headers, _ = harness.http_get(
        f"http://127.0.0.1:{port}/api/status",
        headers={"Origin": EVIL, "Authorization": f"token {token}"},
    )
    assert headers.get("Access-Control-Allow-Origin") in (None, ""), headers


def bridge_ip(name: str) -> str:
    return harness.docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name
    ).stdout.strip()


def listening(name: str) -> set[int]:
    """Ports something listens on, on a non-loopback address, inside the container."""
    out = exec_(name, "cat", "/proc/net/tcp", "/proc/net/tcp6")
    ports = set()
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":
            address, port_hex = fields[1].rsplit(":", 1)
            if address not in ("0100007F", "00000000000000000000000001000000"):
                ports.add(int(port_hex, 16))
    return ports


def test_a_container_without_variables_answers_nothing_without_a_credential(
    image, fake_filebrowser
):
    """No variable at all, attacked from the docker bridge: every port asks for a credential,
    each generated credential is printed once."""
    name, volume = f"aiclipse-rt-{RUN_ID}-bare", f"aiclipse-rt-{RUN_ID}-bare"
    try:
        harness.docker(
            "run", "-d", "--name", name, "-v", f"{volume}:/workspace",
            "-v", f"{fake_filebrowser}:/usr/local/bin/filebrowser:ro", image,
        )  # fmt: skip
        text = harness.wait_log(name, r"comfyui: starting", 60)
        comfy_token = re.search(COMFY_GENERATED, text)[1]
        jupyter_token = re.search(JUPYTER_GENERATED, text)[1]
        password = re.search(r"generated password \(shown once\): (\S+)", text)[1]
        ip = bridge_ip(name)
        auth = harness.basic_auth("comfy", comfy_token)
        harness.wait_http(f"http://{ip}:8188/system_stats", 60, name, headers=auth)
        harness.wait_http(f"http://{ip}:8888/api/status?token={jupyter_token}", 90, name)
        assert listening(name) == {8188, 8888}  # ComfyUI itself on loopback; no sshd (no key)
        for path in ("/", "/system_stats", "/prompt", "/queue", "/api/userdata"):
            assert harness.http_get(f"http://{ip}:8188{path}")[0] == 401, path
        for path in ("/api/status", "/api/contents", "/api/kernels", "/api/terminals"):
            assert harness.http_get(f"http://{ip}:8888{path}")[0] == 403, path
        status, headers, _ = harness.http_get(f"http://{ip}:8888/lab")
        assert status == 302 and "/login" in headers["Location"]
        assert not port_open_at(ip, 8188 + 10000) and not port_open_at(ip, 22)
        logs = harness.logs(name)
        for value in (comfy_token, jupyter_token, password):
            assert logs.count(value) == 1, value
    finally:
        harness.remove_container(name)
        harness.remove_volume(volume)


def port_open_at(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


GOOD_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me"


@pytest.mark.parametrize(
    ("variables", "named", "rule"),
    [
        # the attack: a newline in SSH_PORT injected sshd options (first value wins in sshd)
        ({"SSH_PORT": "2222\nPasswordAuthentication yes\nAuthorizedKeysFile /workspace/k",
          "PUBLIC_KEY": GOOD_KEY}, "SSH_PORT", "must be a port number"),
        ({"SSH_PORT": "70000"}, "SSH_PORT", "1 to 65535"),
        ({"COMFY_PORT": "8188 "}, "COMFY_PORT", "must be a port number"),
        ({"RUNTIME_USER": "comfy\nAllowUsers root"}, "RUNTIME_USER", "must be a user name"),
        ({"AICLIPSE_LISTEN": "0.0.0.0\nPasswordAuthentication yes"}, "AICLIPSE_LISTEN",
         "must be an IPv4 or IPv6 address"),
        ({"PUBLIC_KEY": f'command="id > /tmp/x" {GOOD_KEY}'}, "PUBLIC_KEY line 1",
         "no options"),
        ({"PUBLIC_KEY": f"#\ncert-authority {GOOD_KEY}"}, "PUBLIC_KEY line 2", "no options"),
        ({"SSH_PUBLIC_KEY": "ssh-ed25519 AAAAB3NzaC1yc2E= x"}, "SSH_PUBLIC_KEY line 1",
         "is not a ssh-ed25519 key"),
        ({"JUPYTER_TOKEN": "short"}, "JUPYTER_TOKEN", "at least 16 characters"),
        ({"JUPYTER_PASSWORD": "short"}, "JUPYTER_PASSWORD", "at least 12 characters"),
        ({"COMFY_TOKEN": "short"}, "COMFY_TOKEN", "at least 16 characters"),
        ({"FILEBROWSER_PASSWORD": "elevenchars"}, "FILEBROWSER_PASSWORD", "at least 12"),
        ({"AICLIPSE_ALLOWED_ORIGINS": "*"}, "AICLIPSE_ALLOWED_ORIGINS", "never allowed"),
        ({"COMFY_ARGS": "--cpu --listen 0.0.0.0"}, "COMFY_ARGS", "must not set --listen"),
        ({"JUPYTER_ENABLE": "True"}, "JUPYTER_ENABLE", "must be one of"),
        # AICLIPSE_ROOT reaches sshd's HostKey lines (the state is beside it): a newline there
        # was a line of sshd's config
        ({"AICLIPSE_ROOT": "/workspace/x\nPasswordAuthentication yes", "PUBLIC_KEY": GOOD_KEY},
         "AICLIPSE_ROOT", "must be an absolute path of letters, digits and . _ - / only"),
        ({"AICLIPSE_STATE": f"{ROOT}/.aiclipse"}, "AICLIPSE_STATE",
         "must be outside AICLIPSE_ROOT"),
    ],
)  # fmt: skip
def test_a_bad_variable_stops_the_start_naming_it_and_the_rule(image, variables, named, rule):
    name = f"aiclipse-rt-{RUN_ID}-bad-{uuid.uuid4().hex[:6]}"
    argv = ["run", "--name", name, "--network", "none"]
    for key in variables:
        argv += ["-e", key]
    try:
        done = subprocess.run(
            ["docker", *argv, image],
            env={**os.environ, **variables},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 1, out
        assert f"invalid variable: {named}" in out and rule in out, out
        assert "comfyui: starting" not in out and "ssh: key-only" not in out
        secret = variables.get("JUPYTER_TOKEN") or variables.get("COMFY_TOKEN")
        if secret:
            assert secret not in out  # the rule, never the value of a secret
    finally:
        harness.remove_container(name)


HOSTILE_MANAGER = {
    # duplicate keys (the last wins), a second [default], the key's case, a switch turned on
    "__manager/config.ini": "[default]\nsecurity_level = strong\nsecurity_level = weak\n"
    "share_option = none\n[default]\nSecurity_Level = WEAK\nallow_pip_install = True\n",
    # [DEFAULT] fills in what [default] lacks
    "default/ComfyUI-Manager/config.ini": "[DEFAULT]\nsecurity_level = weak\n[default]\n"
    "network_mode = public\n",
}


def prepare_volume(image: str, volume: str, script: str, user: str = "1000") -> None:
    """Write onto the volume as the runtime user (or root) would, before a start."""
    harness.docker(
        "run", "--rm", "--network", "none", "-u", user, "-v", f"{volume}:/workspace",
        "--entrypoint", "sh", image, "-c", f"mkdir -p {ROOT} && cd {ROOT} && {script}",
    )  # fmt: skip


def manager_reads(text: str) -> dict[str, str]:
    """What ComfyUI-Manager reads from config.ini (comfyui_manager.glob.manager_core)."""
    import configparser

    config = configparser.ConfigParser(strict=False)
    config.read_string(text)
    return dict(config["default"])


def test_the_manager_level_holds_against_every_config_trick(image):
    """Attack: security_level written twice (or [default] twice) made aiclipse_config.py raise,
    the failure was lost in `log "$(...)"`, and Manager (strict=False, last wins) read weak."""
    volume = f"aiclipse-rt-{RUN_ID}-mgr"
    name = f"{volume}-0"
    writes = " && ".join(
        f"mkdir -p $(dirname user/{rel}) && printf '%s' '{text}' > user/{rel}"
        for rel, text in HOSTILE_MANAGER.items()
    )
    try:
        harness.docker("volume", "create", volume)
        prepare_volume(image, volume, "mkdir -p user && chown 1000:1000 . user", user="0")
        prepare_volume(image, volume, writes)
        for text in HOSTILE_MANAGER.values():
            assert manager_reads(text)["security_level"].lower() == "weak"  # the attack works
        harness.docker(
            "run", "-d", "--name", name, "--network", "none", "-e", "JUPYTER_ENABLE=0",
            "-v", f"{volume}:/workspace", image,
        )  # fmt: skip
        logs = harness.wait_log(name, r"comfyui: starting", 60)
        assert "security_level weak -> normal" in logs, logs
        for rel in HOSTILE_MANAGER:
            seen = manager_reads(exec_(name, "cat", f"{ROOT}/user/{rel}"))
            assert seen["security_level"] == "normal", (rel, seen)
            assert seen.get("allow_pip_install", "false").lower() != "true", (rel, seen)
        assert (
            manager_reads(exec_(name, "cat", f"{ROOT}/user/__manager/config.ini"))["share_option"]
            == "none"
        )  # the user's other settings kept
    finally:
        harness.remove_container(name)
        harness.remove_volume(volume)


@pytest.mark.parametrize(
    ("script", "user", "message"),
    [
        ("mkdir -p user/__manager/config.ini && chown -R 1000:1000 .", "0", "manager: cannot"),
        ("mkdir -p ../.aiclipse/extra_model_paths.yaml", "0", "model paths: cannot write"),
    ],
)
def test_a_failing_config_step_stops_the_start(image, script, user, message):
    volume = f"aiclipse-rt-{RUN_ID}-fail-{uuid.uuid4().hex[:6]}"
    name = f"{volume}-0"
    try:
        harness.docker("volume", "create", volume)
        prepare_volume(image, volume, script, user=user)
        done = harness.docker(
            "run", "--name", name, "--network", "none", "-e", "JUPYTER_ENABLE=0",
            "-v", f"{volume}:/workspace", image, check=False, timeout=120,
        )  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode == 1 and message in out, out
        assert "comfyui: starting" not in out
    finally:
        harness.remove_container(name)
        harness.remove_volume(volume)


EVIL_BACKEND = """import os


def _mark():
    with open("/tmp/evil-ran", "a") as out:
        out.write(f"uid={os.getuid()} euid={os.geteuid()}\\n")
    try:
        with open("/root/pwned", "w") as out:
            out.write("root\\n")
    except OSError:
        pass


def get_requires_for_build_wheel(config_settings=None):
    _mark()
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _mark()
    raise RuntimeError("evil backend: done")


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _mark()
    raise RuntimeError("evil backend: done")
"""


def test_a_hostile_node_manifest_never_builds_as_root(image, tmp_path):
    """Attack: the runtime nodes manifest lives on the volume (the runtime user's); with
    NODES_INSTALL=1, install_nodes.py ran as root and pip built a node's local requirement,
    whose build backend wrote /root as uid 0."""
    node = tmp_path / "node"
    node.mkdir()
    (node / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    (node / "requirements.txt").write_text(f"evilpkg @ file://{ROOT}/evilpkg\n")
    _, commit = make_repo(node, tmp_path / "git" / "EvilNode")
    volume = f"aiclipse-rt-{RUN_ID}-evil"
    backend = EVIL_BACKEND.replace("'", "'\"'\"'")
    pyproject = '[project]\nname = "evilpkg"\nversion = "1"\n[build-system]\nrequires = []\n'
    pyproject += 'build-backend = "evil_backend"\nbackend-path = ["."]\n'
    with GitServer(tmp_path / "git") as git:
        runtime = Runtime(image, volume, [], {"NODES_INSTALL": "1", "JUPYTER_ENABLE": "0"})
        try:
            harness.docker("volume", "create", volume)
            prepare_volume(image, volume, f"chown 1000:1000 {ROOT}", user="0")
            prepare_volume(
                image,
                volume,
                f"mkdir evilpkg && printf '%s' '{backend}' > evilpkg/evil_backend.py && "
                f"printf '%s' '{pyproject}' > evilpkg/pyproject.toml && "
                f"echo '{git.url('EvilNode')}@{commit}' > nodes_manifest.txt",
            )
            first = runtime.start()
            logs = harness.wait_log(first, r"nodes: (all installed|install_nodes.py exited)", 120)
            ran = exec_(first, "cat", "/tmp/evil-ran")
            assert "uid=1000 euid=1000" in ran and "uid=0" not in ran, ran  # it ran, not as root
            pwned = harness.docker("exec", first, "test", "-e", "/root/pwned", check=False)
            assert pwned.returncode != 0, "the node's build backend wrote /root"
            assert "installing from" in logs and "as comfy" in logs
        finally:
            runtime.close()


def test_a_state_folder_swapped_by_the_runtime_user_is_not_followed_as_root(image):
    """Attack (a second read of issue 14): where the state's parent is the runtime user's (the
    data folder was, before the state moved beside it; a cloud's volume root can be), they can
    rename root's ``.aiclipse`` and put their own there, with ``jupyter`` a symlink to the
    image's runtime scripts; root's ``install -d -o comfy`` then handed those scripts to the
    user, and the next start ran the user's start.sh as root. The same planted folder at the
    old place (``$ROOT/.aiclipse``, which start.sh moves out of an older volume) is not taken
    either."""
    volume = f"aiclipse-rt-{RUN_ID}-state"
    name = f"{volume}-0"
    try:
        harness.docker("volume", "create", volume)
        prepare_volume(image, volume, "mkdir -p ../.aiclipse && chown 1000:1000 .. .", user="0")
        prepare_volume(
            image, volume,
            "cd .. && mv .aiclipse theirs && mkdir .aiclipse"
            " && ln -s /opt/aiclipse/runtime .aiclipse/jupyter"
            " && ln -s /opt/aiclipse/runtime .aiclipse/filebrowser"
            " && mkdir aiclipse/.aiclipse && ln -s /opt/aiclipse/runtime aiclipse/.aiclipse/ssh",
        )  # fmt: skip
        harness.docker(
            "run", "-d", "--name", name, "--network", "none", "-e", f"JUPYTER_TOKEN={'j' * 32}",
            "-v", f"{volume}:/workspace", image,
        )  # fmt: skip
        logs = harness.wait_log(name, r"comfyui: starting", 90)
        assert "was not a folder of root's; moved aside" in logs, logs
        assert "state: moved" not in logs, logs  # the planted old-place folder is not taken
        owners = exec_(name, "stat", "-c", "%u %n", "/opt/aiclipse/runtime",
                       "/opt/aiclipse/runtime/start.sh", STATE)  # fmt: skip
        assert [line.split()[0] for line in owners.splitlines()] == ["0", "0", "0"], owners
        assert (
            exec_(name, "sh", "-c", f"test -L {STATE}/jupyter && echo link || echo dir").strip()
            == "dir"
        )
    finally:
        harness.remove_container(name)
        harness.remove_volume(volume)
