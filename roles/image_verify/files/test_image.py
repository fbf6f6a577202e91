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
    # get_arch_list() answers [] where no GPU is visible (torch 2.11); the flags it reads
    # are compiled in and answer on a CPU builder too
    code = (
        'import torch; f = getattr(torch._C, "_cuda_getArchFlags", None);'
        " print(chr(59).join(f().split() if f else torch.cuda.get_arch_list()))"
    )
    out = host.check_output(f"{PY} -c '{code}'")
    assert serves(out.split(";"), expect["capability"]), (out, expect["capability"])


def test_comfyui_at_its_pinned_commit(host, expect):
    assert host.check_output(f"git -C {COMFY} rev-parse HEAD") == expect["comfyui_commit"]


def _as_user(expect, command: str) -> str:
    """``command`` (``RUN_AS_USER python main.py ...``) in ComfyUI's folder as the runtime
    user, the way start.sh starts ComfyUI (setpriv from root), with the folders start.sh
    gives it (output, input, user) in a fresh folder of the user's at ``$d``.
    ``comfyui_dir``/``python_bin`` in expect.json stand in for the image's paths (tests)."""
    user = expect.get("user", "comfy")
    comfy, py = expect.get("comfyui_dir", COMFY), expect.get("python_bin", PY)
    return (
        # ComfyUI refuses a --user-directory that does not exist: made here, as start.sh does
        f'd=$(mktemp -d /tmp/aiclipse-verify.XXXXXX) && chmod 0755 "$d" && '
        f'mkdir -p "$d/output" "$d/input" "$d/user" && cd {comfy} && '
        f'if [ "$(id -u)" = 0 ]; then chown -R "{user}:" "$d" && '
        f'set -- env HOME="$(getent passwd {user} | cut -d: -f6)" USER={user} LOGNAME={user} '
        f'setpriv --reuid="$(id -u {user})" --regid="$(id -g {user})" --init-groups --; '
        "else set --; fi; "
        + command.replace("RUN_AS_USER", '"$@"').replace("PYTHON", py)
        + ' --output-directory "$d/output" --input-directory "$d/input"'
        ' --user-directory "$d/user"'
    )


@pytest.fixture(scope="module")
def quick_test(host, expect):
    """ComfyUI's own start (``--quick-test-for-ci``) as the runtime user: every node loaded,
    then exit. (testinfra's ``host`` is module-scoped, so this is too.)"""
    run = host.run(
        _as_user(expect, "timeout 300 RUN_AS_USER PYTHON main.py --cpu --quick-test-for-ci")
        + ' 2>&1; rc=$?; rm -rf "$d"; exit $rc'
    )
    return run.rc, run.stdout + run.stderr


def _failures(comfy_log, log: str, expect) -> dict[str, list[str]]:
    """ComfyUI's log's import failures, less what the plan named as lost."""
    accepted = set(expect.get("accepted_import_failures", []))
    return {k: v for k, v in comfy_log.failures(log).items() if k not in accepted}


def test_comfyui_quick_test_loads_every_node(quick_test, comfy_log, expect):
    """ComfyUI exits 0 with IMPORT FAILED lines: the log is read, and every failure named
    (its own comfy_extras/comfy_api_nodes files and every custom node, a node-level import
    error inside a pack that loaded included), each with the exception line of its traceback
    and where it was raised. Only what the plan named as lost is accepted (ComfyUI's audio
    nodes on a target whose torch family has no torchaudio)."""
    rc, log = quick_test
    failures = _failures(comfy_log, log, expect)
    found = "".join(f"\n  {line}" for line in comfy_log.describe(failures))
    assert rc == 0, f"ComfyUI's quick test exited {rc}:{found}\n{log[-3000:]}"
    assert not failures, f"ComfyUI could not import {len(failures)}:{found}"


def test_manager_pinned_and_not_weak(host, expect):
    """Manager as the plan shipped it: the comfyui-manager distribution at the version
    ComfyUI's manager_requirements.txt pins, started by ComfyUI (no clone in custom_nodes,
    which ComfyUI >= 0.4 would skip), or a clone at its pinned commit."""
    plan = expect.get("manager") or {"mode": "git", "commit": expect["manager_commit"]}
    manager = f"{COMFY}/custom_nodes/ComfyUI-Manager"
    mode = host.run("printenv AICLIPSE_MANAGER_MODE").stdout.strip() or "git"
    assert mode == plan["mode"], (mode, plan)
    if plan["mode"] == "package":
        assert not host.file(manager).exists, f"{manager} is a clone ComfyUI would skip"
        shown = host.run(f"{PY} -m pip show comfyui-manager")
        assert shown.rc == 0, f"comfyui-manager is not installed: {shown.stderr}"
        found = re.search(r"^Version:\s*(\S+)", shown.stdout, re.M).group(1)
        for spec in plan["specs"]:
            pinned = re.fullmatch(r"comfyui[-_]manager\s*==\s*(\S+)", spec, re.I)
            if pinned:
                assert found == pinned.group(1), (found, spec)
    else:
        assert host.check_output(f"git -C {manager} rev-parse HEAD") == plan["commit"]
    config = host.file("/opt/aiclipse/manager-config.ini").content_string
    level = re.search(r"security_level\s*=\s*(\S+)", config)
    assert level and level.group(1) != "weak", config


def test_every_node_at_its_commit_and_loaded_by_comfyui(host, expect, quick_test, comfy_log):
    """Each pinned node at its commit and loaded AS COMFYUI LOADS IT (its module under
    custom_nodes/, the ComfyUI root importable: ``execution``, ``folder_paths``, ``server``),
    by the quick test's own log; every one that is not is named with why."""
    failures, loaded = comfy_log.read(quick_test[1])
    problems = []
    for node in expect["nodes"]:
        path = f"{expect.get('comfyui_dir', COMFY)}/custom_nodes/{node['name']}"
        head = host.run(f"git -C {path} rev-parse HEAD").stdout.strip()
        why = failures.get(path, []) + failures.get(f"{path}/prestartup_script.py", [])
        if head != node["commit"]:
            problems.append(f"{node['name']}: at {head or 'no checkout'}, pinned {node['commit']}")
        elif why:
            problems.append(f"{node['name']}: IMPORT FAILED: {'; '.join(why)}")
        elif path not in loaded:
            problems.append(f"{node['name']}: not in ComfyUI's import times (never loaded)")
    assert not problems, f"{len(problems)} node(s) not as pinned and loaded:" + "".join(
        f"\n  {line}" for line in problems
    )


SERVER_PORT = 8199  # the container's own network namespace (image.yml runs it without --network)
LOG_MARK = "----- aiclipse: ComfyUI's log"


def test_workflow_nodes_are_in_object_info(host, expect, comfy_log):
    """A short server run (as the runtime user, no GPU): /object_info must hold every node
    class each workflow uses (the classes come from expect.json: read on the controller)."""
    wanted = {w: need["classes"] for w, need in expect.get("workflows", {}).items()}
    if not any(wanted.values()):
        pytest.skip("no workflow names a node class")
    url = f"http://127.0.0.1:{SERVER_PORT}/object_info"
    serve = f"RUN_AS_USER PYTHON main.py --cpu --listen 127.0.0.1 --port {SERVER_PORT}"
    run = host.run(
        _as_user(expect, serve) + ' > "$d/server.log" 2>&1 & pid=$!; ok=0; i=0; '
        # bounded: 240 s, or sooner when the server died
        f'while [ $i -lt 240 ]; do if curl -sf -o "$d/info.json" {url}; then ok=1; break; fi; '
        "kill -0 $pid 2>/dev/null || break; i=$((i+1)); sleep 1; done; "
        # stopped cleanly: SIGTERM, 10 s to go, then SIGKILL
        "kill -TERM $pid 2>/dev/null; j=0; "
        "while kill -0 $pid 2>/dev/null && [ $j -lt 20 ]; do sleep 0.5; j=$((j+1)); done; "
        "kill -KILL $pid 2>/dev/null; "
        f'if [ $ok = 1 ]; then cat "$d/info.json"; fi; echo; echo "{LOG_MARK}"; '
        'tail -n 400 "$d/server.log"; rm -rf "$d"'
    )
    info, _, log = run.stdout.partition(LOG_MARK)
    failed = "".join(f"\n  {line}" for line in comfy_log.describe(comfy_log.failures(log)))
    assert info.strip().startswith("{"), (
        f"ComfyUI's server did not answer {url} within 240 s (or died):{failed}\n{log[-3000:]}"
    )
    classes = set(json.loads(info))
    missing = [
        f"{workflow}: {kind}" for workflow, kinds in wanted.items() for kind in kinds
        if kind not in classes
    ]  # fmt: skip
    errors = [line for line in log.splitlines() if "error occurred while retrieving" in line]
    assert not missing, (
        f"{len(missing)} node class(es) the workflows use are not in ComfyUI's /object_info:"
        + "".join(f"\n  {line}" for line in missing + errors)
        + (f"\nfailed to import in that run:{failed}" if failed else "")
        + "\nFix: add the node pack that provides each to nodes_manifest.txt (or fix its import)"
    )


def test_workflow_models_are_in_the_manifest(expect):
    """Every model file a workflow names is in the template's models manifest (read on the
    controller: expect.json's ``missing_models`` names workflow, node and file)."""
    missing = expect.get("missing_models", [])
    assert not missing, f"{len(missing)} model(s) no manifest line provides:" + "".join(
        f"\n  {line}" for line in missing
    )


def test_image_contents(host):
    for path in ("/manifests/models_manifest.txt", "/opt/workflows", START):
        assert host.file(path).exists, path
    assert host.file(START).mode & 0o111
    assert host.file("/opt/aiclipse/constraints.txt").exists


def test_installed_distributions_are_consistent(host):
    """No stale metadata (a layer copied over the venv's own setuptools left its old
    .dist-info beside the new one): one .dist-info per distribution, pip check clean."""
    code = (
        "import collections, importlib.metadata as m, re;"
        ' c = collections.Counter(re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()'
        " for d in m.distributions());"
        ' print(" ".join(sorted(n for n, k in c.items() if k > 1)))'
    )
    twice = host.check_output(f"{PY} -c '{code}'")
    assert twice == "", f"installed twice (stale .dist-info): {twice}"
    check = host.run(f"{PY} -m pip check")
    # package_layers_exclude/_replace (the image's package-overrides.json): a distribution
    # left out because another one owns its files (opencv-python, where
    # opencv-python-headless owns cv2/) is "not installed" to pip check by design
    overrides = host.file("/opt/aiclipse/package-overrides.json")
    served: set[str] = set()
    if overrides.exists:
        data = json.loads(overrides.content_string or "{}")
        served = {_canonical(n) for n in [*data.get("exclude", []), *data.get("replace", {})]}
    missing = re.compile(r"^\S+ \S+ requires (\S+), which is not installed\.$")
    problems = [
        line
        for line in (check.stdout + check.stderr).splitlines()
        if line.strip()
        and line.strip() != "No broken requirements found."
        and not ((m := missing.match(line.strip())) and _canonical(m.group(1)) in served)
    ]
    assert not problems, "pip check: " + "\n  ".join(problems)[-2000:]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


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
    # the messages name a canary by its position only: a failure's message reaches the log
    in_history = [n for n, c in enumerate(expect["canaries"], 1) if c in history]
    in_config = [n for n, c in enumerate(expect["canaries"], 1) if c in config]
    assert not in_history, f"canary secret(s) #{in_history} in the image's history"
    assert not in_config, f"canary secret(s) #{in_config} in the image's config"
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
