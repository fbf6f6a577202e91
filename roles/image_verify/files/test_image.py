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
        pass  # a CUDA build on a cpu target runs on the CPU; the plan names it with its size
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


@pytest.fixture(scope="module")
def quick_test(host):
    """ComfyUI's own start (``--quick-test-for-ci``): every node loaded, then exit."""
    run = host.run(f"cd {COMFY} && timeout 300 {PY} main.py --cpu --quick-test-for-ci 2>&1")
    return run.rc, run.stdout + run.stderr


def test_comfyui_quick_test_loads_every_node(quick_test, comfy_log, expect):
    """ComfyUI exits 0 with IMPORT FAILED lines: the log is read, and every failure named.
    Only what the plan named as lost is accepted (ComfyUI's audio nodes on a target whose
    torch has no torchaudio)."""
    rc, log = quick_test
    assert rc == 0, f"ComfyUI's quick test exited {rc}:\n{log[-3000:]}"
    accepted = set(expect.get("accepted_import_failures", []))
    failures = {
        where: why
        for where, why in comfy_log.comfy_log_failures(log).items()
        if where.rsplit("/", 1)[-1] not in accepted
    }
    assert not failures, "ComfyUI could not import: " + "; ".join(
        f"{where}: {why}" for where, why in sorted(failures.items())
    )


def test_manager_pinned_and_not_weak(host, expect):
    manager = f"{COMFY}/custom_nodes/ComfyUI-Manager"
    assert host.check_output(f"git -C {manager} rev-parse HEAD") == expect["manager_commit"]
    config = host.file("/opt/aiclipse/manager-config.ini").content_string
    level = re.search(r"security_level\s*=\s*(\S+)", config)
    assert level and level.group(1) != "weak", config


def test_every_node_at_its_commit_and_loaded_by_comfyui(host, expect, quick_test, comfy_log):
    """Each pinned node at its commit and loaded AS COMFYUI LOADS IT (its root importable:
    ``execution``, ``folder_paths``, ``server``), every one that is not named."""
    log = quick_test[1]
    loaded, failures = comfy_log.comfy_log_loaded(log), comfy_log.comfy_log_failures(log)
    problems = []
    for node in expect["nodes"]:
        path = f"{COMFY}/custom_nodes/{node['name']}"
        head = host.run(f"git -C {path} rev-parse HEAD").stdout.strip()
        if head != node["commit"]:
            problems.append(f"{node['name']}: at {head or 'no checkout'}, pinned {node['commit']}")
        elif path in failures:
            problems.append(f"{node['name']}: IMPORT FAILED: {failures[path]}")
        elif path not in loaded:
            problems.append(f"{node['name']}: not in ComfyUI's import times (never loaded)")
    assert not problems, "; ".join(problems)


def test_workflow_nodes_are_in_object_info(host, expect):
    """A short server run: /object_info must hold every node class each workflow uses."""
    wanted = {w: need["classes"] for w, need in expect.get("workflows", {}).items()}
    if not any(wanted.values()):
        pytest.skip("no workflow names a node class")
    port = 8188  # the container's own network namespace (image.yml runs it without --network)
    log = "/tmp/aiclipse-object-info.log"
    run = host.run(
        f"cd {COMFY} && ({PY} main.py --cpu --listen 127.0.0.1 --port {port} "
        f"> {log} 2>&1 &) ; ok=0; for i in $(seq 1 240); do "
        f"if curl -sf -o /tmp/aiclipse-object-info.json http://127.0.0.1:{port}/object_info; "
        "then ok=1; break; fi; sleep 1; done; "
        # [m]ain.py: the pattern must not match this very shell's command line
        f"pkill -f '[m]ain.py --cpu --listen 127.0.0.1 --port {port}' || true; "
        f"[ $ok = 1 ] && cat /tmp/aiclipse-object-info.json || tail -40 {log}"
    )
    assert run.rc == 0 and run.stdout.lstrip().startswith("{"), (
        f"ComfyUI's server did not answer /object_info within 240 s:\n{run.stdout[-3000:]}"
    )
    classes = set(json.loads(run.stdout))
    missing = [
        f"{workflow}: {kind}" for workflow, kinds in wanted.items() for kind in kinds
        if kind not in classes
    ]  # fmt: skip
    assert not missing, (
        "node classes the workflows use that ComfyUI's /object_info does not list: "
        + ", ".join(missing)
        + ". Fix: add the node pack that provides each to nodes_manifest.txt"
    )


def test_workflow_models_are_in_the_manifest(expect):
    missing = expect.get("missing_models", [])
    assert not missing, "; ".join(missing)


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
