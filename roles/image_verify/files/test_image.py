"""Verify one built image before anyone can pull it (pytest-testinfra).

Run against a container of the exact image that will be pushed:
    pytest --hosts=docker://<container> test_image.py --expect expect.json
``expect.json`` (written by the image_verify role from the plan) holds the image reference,
the target, the pins and the canary secrets. The GPU tests run only where the target's GPU
is present (``--gpu``); the same file runs with ``--hosts=local://`` on a GPU machine.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

PY = "/opt/venv/bin/python"
COMFY = "/opt/ComfyUI"
START = "/opt/aiclipse/runtime/start.sh"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def test_python_version(host, expect):
    out = host.check_output(f"{PY} -c 'import sys; print(sys.version.split()[0])'")
    assert out.startswith(expect["python"] + "."), out


def test_torch_version_and_cuda_match_the_target(host, expect):
    out = host.check_output(
        f"{PY} -c 'import json, torch; print(json.dumps([torch.__version__, torch.version.cuda]))'"
    )
    version, cuda = json.loads(out)
    assert version.split("+")[0] == expect["torch"], version
    if expect["cuda"] == "cpu":
        assert cuda is None, f"a CPU target got CUDA {cuda}"
    else:
        assert cuda is not None and cuda.startswith(expect["cuda"]), cuda


def test_compiled_arches_serve_the_target(host, expect, serves):
    if expect["cuda"] == "cpu":
        pytest.skip("cpu target: no CUDA arches")
    code = "import torch; print(chr(59).join(torch.cuda.get_arch_list()))"
    out = host.check_output(f"{PY} -c '{code}'")
    assert serves(out.split(";"), expect["capability"]), (out, expect["capability"])


def test_comfyui_at_its_pinned_commit(host, expect):
    assert host.check_output(f"git -C {COMFY} rev-parse HEAD") == expect["comfyui_commit"]


def test_comfyui_quick_test_for_ci(host):
    run = host.run(f"cd {COMFY} && timeout 300 {PY} main.py --cpu --quick-test-for-ci")
    assert run.rc == 0, run.stdout[-2000:] + run.stderr[-2000:]


def test_manager_pinned_and_not_weak(host, expect):
    manager = f"{COMFY}/custom_nodes/ComfyUI-Manager"
    assert host.check_output(f"git -C {manager} rev-parse HEAD") == expect["manager_commit"]
    config = host.file("/opt/aiclipse/manager-config.ini").content_string
    level = re.search(r"security_level\s*=\s*(\S+)", config)
    assert level and level.group(1) != "weak", config


def test_every_node_at_its_commit_and_importable(host, expect):
    for node in expect["nodes"]:
        path = f"{COMFY}/custom_nodes/{node['name']}"
        assert host.check_output(f"git -C {path} rev-parse HEAD") == node["commit"], node
        run = host.run(
            f"cd {COMFY}/custom_nodes && {PY} -c 'import importlib; importlib.import_module("
            f'"{node["name"]}")\''
        )
        assert run.rc == 0, f"{node['name']} does not import: {run.stderr[-1500:]}"


def test_image_contents(host):
    for path in ("/manifests/models_manifest.txt", "/opt/workflows", START):
        assert host.file(path).exists, path
    assert host.file(START).mode & 0o111
    assert host.file("/opt/aiclipse/constraints.txt").exists


def test_runtime_user_is_not_root(host, expect):
    user = host.user("comfy")
    assert user.exists and user.uid == expect.get("uid", 1000) and user.uid != 0


def test_no_ssh_host_keys_in_the_image(host):
    assert host.run("ls /etc/ssh/ssh_host_* 2>/dev/null").stdout.strip() == ""


def test_canaries_absent_from_history_config_and_layers(expect):
    """BLD-5: build secrets never reach the history, the config (env, labels) or a layer."""
    ref = expect["image"]
    history = subprocess.run(
        ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", ref],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    config = subprocess.run(
        ["docker", "image", "inspect", ref], capture_output=True, text=True, check=True
    ).stdout
    for canary in expect["canaries"]:
        assert canary not in history and canary not in config
    if expect["canaries"]:
        save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
        found = subprocess.run(
            ["grep", "-a", "-c", "-F", *[arg for c in expect["canaries"] for arg in ("-e", c)]],
            stdin=save.stdout, capture_output=True, text=True, check=False,
        )  # fmt: skip
        save.wait()
        assert found.stdout.strip() == "0", "a canary secret is inside a layer"


@pytest.mark.gpu
def test_gpu_is_the_targets_and_computes(host, expect):
    code = (
        "import json, torch;"
        "a = torch.randn(512, 512);"
        "ok = torch.cuda.is_available();"
        "cap = torch.cuda.get_device_capability(0) if ok else None;"
        "g = torch.mm(a.cuda(), a.cuda()).cpu() if ok else None;"
        "c = torch.mm(a, a);"
        "d = ((g - c).abs().max() / c.abs().max()).item() if ok else None;"
        "print(json.dumps([ok, cap, d]))"
    )
    ok, cap, diff = json.loads(host.check_output(f"{PY} -c '{code}'"))
    assert ok, "torch.cuda.is_available() is False"
    assert f"{cap[0]}.{cap[1]}" == expect["capability"], cap
    assert diff < 1e-3, f"GPU matmul differs from the CPU result by {diff:.2e} (relative)"
