"""build.yml's build step for real: plan, then ``docker buildx bake`` of the stale nodes.

The tiny template for ``cpu`` against the session's registry: ComfyUI (the fake one of
tests/fixtures/comfyui) and ComfyUI-Manager come from a git daemon on 127.0.0.1 (builds use
the host network to reach it), torch is a small stand-in ``torch==2.13.0+cpu`` wheel in a
test wheelhouse, JupyterLab is left out (its PyPI install is slow; the rendering with it is
a unit test). The CA bundle given to builds as the ``ca`` secret carries a canary line, which
must appear in no layer, no history and no image config.

build.yml then verifies tiny-cpu and pushes all three (hash tags, digests confirmed, the
release tag moved) and writes the report; a second run builds nothing and pushes 0 bytes; a
template change that fails verification moves no tag; a one-package change re-runs only that
layer's stage and pushes about that layer's bytes.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from gitserver import GitServer, make_comfy_sources
from helpers import REPO, docker, free_port, playbook
from wheels import make_torch_standin, make_wheel

sys.path.insert(0, str(Path(__file__).resolve().parent / "runtime"))
import harness

NODES = ("base-common", "base-cpu", "tiny-cpu")
CANARY = f"aiclipse-canary-ca-{uuid.uuid4().hex}"
ROW = re.compile(r"^\s*-?\s*\"?(built|cached|failed|skipped|planned)\s+(\S+)", re.M)


def statuses(output: str) -> dict[str, str]:
    """The build step's table (node -> built/cached/...), the last one printed."""
    table = output[output.rfind("Show what was built, cached, failed or skipped") :]
    return {m[2]: m[1] for m in ROW.finditer(table)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("git")
    commits = make_comfy_sources(root)
    wheels = tmp_path_factory.mktemp("wheels")
    # A CPU torch stand-in (the real one is 183 MB) and dependencies no index has, so every
    # wheel comes from the build context and the layer installs need no index at all.
    make_torch_standin(wheels, ("aiclipse-test-dep",))
    make_wheel(wheels, "aiclipse-test-dep", "1.0.0")
    # Two releases of one package of the "essentials" layer, each with 256 KB that gzip
    # cannot shrink, so that layer's bytes stand out from the small ones around it.
    for version, seed in (("2.0.0", 1), ("2.0.1", 2)):
        blob = random.Random(seed).randbytes(256 * 1024).hex()
        make_wheel(
            wheels,
            "aiclipse-test-essential",
            version,
            files={"aiclipse_test_essential/blob.py": f"BLOB = {blob!r}\n"},
        )
    ca = tmp_path_factory.mktemp("ca") / "ca.crt"
    bundle = Path("/etc/ssl/certs/ca-certificates.crt").read_text()
    ca.write_text(f"# {CANARY}\n{bundle}")
    with GitServer(root) as server:
        yield {
            "comfyui": {"repo": server.url("ComfyUI"), "ref": commits["ComfyUI"]},
            "manager": {"repo": server.url("ComfyUI-Manager"), "ref": commits["ComfyUI-Manager"]},
            "wheels": str(wheels),
            "ca": str(ca),
        }


def build_vars(stack, sources, tmp: Path) -> dict:
    return {
        **stack["vars"],
        "template": "tiny",
        "gpu": "cpu",
        "aiclipse_templates_dir": str(REPO / "tests" / "fixtures" / "templates"),
        "aiclipse_build_dir": str(tmp / "build"),
        "aiclipse_cache_dir": str(tmp / "cache"),
        "comfyui": sources["comfyui"],
        "manager": sources["manager"],
        "gpu_targets": {
            "cpu": {"cuda": "cpu", "torch": "2.13.0", "torch_wheelhouse": sources["wheels"]}
        },
        "package_layers": [{"name": "essentials", "specs": ["aiclipse-test-essential==2.0.0"]}],
        "package_layers_exclude": [],
        "build_network": "host",
        "build_ca_bundle": sources["ca"],
        "image_jupyter_spec": "",
        "image_verify_canaries": [CANARY],
        "aiclipse_reports_dir": str(tmp / "reports"),
    }


@pytest.fixture(scope="module")
def built(stack, sources, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    extra = build_vars(stack, sources, tmp)
    run = playbook("build.yml", extra)
    plan = {}
    if (tmp / "build" / "plan.json").exists():
        plan = {
            n["name"]: n for n in json.loads((tmp / "build" / "plan.json").read_text())["nodes"]
        }
    first = tmp / "reports" / "latest" / "report.json"
    report = json.loads(first.read_text()) if first.exists() else {}
    state = {"run": run, "plan": plan, "tmp": tmp, "vars": extra, "refs": set(), "report": report}
    yield state
    refs = state["refs"] | {n["ref"] for n in plan.values() if n["kind"] != "os-base"}
    for image in refs:
        docker("rmi", "-f", image, check=False)


def ref(built, node: str) -> str:
    return built["plan"][node]["ref"]


def in_image(built, *cmd: str, node: str = "tiny-cpu") -> str:
    return docker("run", "--rm", "--entrypoint", cmd[0], ref(built, node), *cmd[1:]).strip()


def test_first_run_builds_the_three_images_with_their_hash_tags(built):
    run = built["run"]
    assert run.returncode == 0, run.stdout[-6000:]
    assert {n: statuses(run.stdout).get(n) for n in NODES} == dict.fromkeys(NODES, "built")
    for node in NODES:
        tag = ref(built, node)
        assert re.search(rf"/comfyui:{node}-[0-9a-f]{{12}}$", tag), tag
        labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag))
        assert labels["io.aiclipse.node-hash"] == built["plan"][node]["hash"]
    # build_network=host: bake files cannot carry it, so one `docker buildx build` per target
    logs = list((built["tmp"] / "build" / "logs").iterdir())
    assert len(logs) == 1
    assert {p.name for p in logs[0].glob("*.log")} == {
        "level1.base-common.log",
        "level2.base-cpu.log",
        "level3.tiny-cpu.log",
    }


def test_comfyui_is_at_its_pin_and_torch_imports(built, sources):
    assert (
        in_image(built, "git", "-C", "/opt/ComfyUI", "rev-parse", "HEAD")
        == (sources["comfyui"]["ref"])
    )
    manager = "/opt/ComfyUI/custom_nodes/ComfyUI-Manager"
    assert in_image(built, "git", "-C", manager, "rev-parse", "HEAD") == sources["manager"]["ref"]
    out = in_image(built, "/opt/venv/bin/python", "-c", "import torch; print(torch.__version__)")
    assert out == "2.13.0+cpu"
    constraints = in_image(built, "cat", "/opt/aiclipse/constraints.txt")
    assert "torch==2.13.0+cpu" in constraints
    assert in_image(built, "printenv", "PIP_CONSTRAINT") == "/opt/aiclipse/constraints.txt"


def test_runtime_layout_is_what_start_sh_expects(built):
    listing = in_image(built, "ls", "/opt/aiclipse/runtime").split()
    for script in ("start.sh", "aiclipse_config.py", "download_models.py", "install_nodes.py"):
        assert script in listing
    assert "manifests.py" in listing
    assert in_image(built, "id", "-u", "comfy") == "1000"
    assert in_image(built, "ls", "/opt/workflows") == "tiny.json"
    assert "tiny.safetensors" in in_image(built, "cat", "/manifests/models_manifest.txt")
    entry = json.loads(
        docker(
            "image", "inspect", "--format", "{{json .Config.Entrypoint}}", ref(built, "tiny-cpu")
        )
    )
    assert entry == ["/usr/bin/tini", "-g", "--", "/opt/aiclipse/runtime/start.sh"]
    assert in_image(built, "sh", "-c", "ls /etc/ssh/ssh_host_* 2>/dev/null | wc -l") == "0"


def test_the_container_starts_and_comfyui_answers(built):
    """The built image as RunPod starts it: ComfyUI answers through the authenticating proxy
    (the token from COMFY_TOKEN, given through the environment, not argv)."""
    name, volume, port, internal = (
        f"aiclipse-build-{uuid.uuid4().hex[:8]}",
        f"aiclipse-build-{uuid.uuid4().hex[:8]}",
        free_port(),
        free_port(),
    )
    token = uuid.uuid4().hex
    try:
        docker(
            "run", "-d", "--name", name, "--network", "host", "-v", f"{volume}:/workspace",
            "-e", "AICLIPSE_LISTEN=127.0.0.1", "-e", f"COMFY_PORT={port}",
            "-e", f"COMFY_INTERNAL_PORT={internal}", "-e", "COMFY_TOKEN",
            "-e", "MODELS_DOWNLOAD=0", "-e", "FILEBROWSER_ENABLE=0", "-e", "JUPYTER_ENABLE=0",
            ref(built, "tiny-cpu"),
            env={"COMFY_TOKEN": token},
        )  # fmt: skip
        harness.wait_http(
            f"http://127.0.0.1:{port}/system_stats", 60, container=name,
            headers=harness.basic_auth("comfy", token),
        )  # fmt: skip
        logs = docker("logs", name)
        assert "[aiclipse] comfyui: starting" in logs
        assert "COMFY_ARGS: --cpu" in logs
        # Manager reads its config under ComfyUI's user directory, on the volume
        manager = docker("exec", name, "cat", "/workspace/aiclipse/user/__manager/config.ini")
        assert "security_level = normal" in manager
        docker("stop", "-t", "10", name)
        assert docker("inspect", "-f", "{{.State.ExitCode}}", name).strip() == "0"
    finally:
        docker("rm", "-f", "-v", name, check=False)
        docker("volume", "rm", "-f", volume, check=False)


def test_the_ca_bundle_is_in_no_layer_history_or_config(built, tmp_path):
    refs = [ref(built, node) for node in NODES]
    for image in refs:
        assert CANARY not in docker("history", "--no-trunc", image)
        assert CANARY not in docker("image", "inspect", image)
    archive = tmp_path / "images.tar"
    docker("save", "-o", str(archive), *refs)
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            data = outer.extractfile(member).read()
            assert CANARY.encode() not in data, member.name
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    names = layer.getnames()
                assert not any(n.endswith("run/secrets/ca") for n in names), member.name


def registry_digest(stack, repo: str, tag: str) -> str | None:
    req = urllib.request.Request(
        f"http://{stack['listen']}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as err:
        assert err.code == 404
        return None


def test_push_confirms_digests_and_moves_the_release_tag(built, stack):
    """REG-1/2: hash tags pushed, the release tag points at the verified manifest."""
    out = built["run"].stdout
    # the YAML callback folds long lines: compare without whitespace
    pushed = re.sub(r"\s+", "", out[out.rfind("TASK [image_push : Show what was pushed]") :])
    for node in NODES:
        plan = built["plan"][node]
        repo, tag = plan["ref"].split("/", 1)[1].rsplit(":", 1)
        digest = registry_digest(stack, repo, tag)
        assert digest and digest in pushed, (node, digest)
    tiny = built["plan"]["tiny-cpu"]
    repo, hash_tag = tiny["ref"].split("/", 1)[1].rsplit(":", 1)
    assert registry_digest(stack, repo, "tiny-cpu") == registry_digest(stack, repo, hash_tag)
    total = int(re.search(r"bytespushedinall:(\d+)", pushed)[1])
    assert total > 0


def test_second_run_builds_and_pushes_nothing(built):
    again = playbook("build.yml", built["vars"])
    assert again.returncode == 0, again.stdout[-6000:]
    assert {n: statuses(again.stdout).get(n) for n in NODES} == dict.fromkeys(NODES, "cached")
    logs = list((built["tmp"] / "build" / "logs").iterdir())
    assert len(logs) == 1  # the first run's folder only: no bake call, no log
    build_to_push = again.stdout.split("Build the stale images")[-1].split("PLAY [Report")[0]
    assert "changed: [localhost]" not in build_to_push
    assert "bytes pushed in all: 0" in again.stdout
    report = latest_report(built)
    assert report["summary"]["cached"] == list(NODES) and report["summary"]["bytes_pushed"] == 0


def test_the_built_image_passed_verification(built):
    """image_verify ran the testinfra suite on tiny-cpu (a container of the exact image)."""
    out = built["run"].stdout
    assert re.search(r"passed\s+tiny-cpu\s+\d+ passed", out), out[out.rfind("TASK [image_verify") :]
    report = built["tmp"] / "build" / "verify" / "tiny-cpu.xml"
    assert 'failures="0"' in report.read_text() and 'errors="0"' in report.read_text()
    expect = json.loads((built["tmp"] / "build" / "verify" / "tiny-cpu.json").read_text())
    assert expect["comfyui_commit"] == built["vars"]["comfyui"]["ref"]
    assert oct((built["tmp"] / "build" / "verify" / "tiny-cpu.json").stat().st_mode)[-3:] == "600"
    assert CANARY not in out  # the canary list is no_log


def latest_report(built) -> dict:
    return json.loads((built["tmp"] / "reports" / "latest" / "report.json").read_text())


def tags(stack, repo: str) -> dict[str, str]:
    """Every tag of ``repo`` in the session's registry and the digest it points at."""
    with urllib.request.urlopen(f"http://{stack['listen']}/v2/{repo}/tags/list", timeout=5) as r:
        names = json.load(r).get("tags") or []
    return {tag: registry_digest(stack, repo, tag) for tag in sorted(names)}


def test_the_report_has_every_image_with_its_layer_sizes(built, stack):
    """Issue 4 item 5: JSON, a table in the output and an SVG chart, per image."""
    report = built["report"]
    images = {item["node"]: item for item in report["images"]}
    assert report["summary"]["built"] == list(NODES) and report["summary"]["ok"]
    assert report["templates"] == ["tiny"] and report["layers_unread"] == []
    tiny = images["tiny-cpu"]
    assert tiny["status"] == "built" and tiny["pushed"] and tiny["verified"] == "passed"
    repo, hash_tag = tiny["ref"].split("/", 1)[1].rsplit(":", 1)
    assert tiny["digest"] == registry_digest(stack, repo, hash_tag)
    assert tiny["tags"] == built["plan"]["tiny-cpu"]["release_tags"]
    assert tiny["build_seconds"] > 0 and tiny["push_seconds"] > 0
    owners = [layer["owner"] for layer in tiny["layers"]]
    assert {"os-base", "base-common", "base-cpu", "tiny-cpu"} <= set(owners)
    assert owners == sorted(owners, key=["os-base", *NODES].index)  # parents' layers first
    assert tiny["size"] == sum(layer["size"] for layer in tiny["layers"]) > 0
    pushed = sum(images[n]["bytes_pushed"] for n in NODES)
    assert report["summary"]["bytes_pushed"] == pushed > 0
    # layers shared down the chain are stored once
    assert report["summary"]["unique_bytes"] < report["summary"]["images_bytes"]
    folder = built["tmp"] / "reports" / report["stamp"]
    chart = ET.parse(folder / "layers.svg").getroot()
    bars = [t.text for t in chart.iter("{http://www.w3.org/2000/svg}text")]
    assert all(node in bars for node in NODES)
    out = built["run"].stdout
    shown = out[out.rfind("TASK [Show the report]") :]
    assert re.search(r"built\s+tiny-cpu\s+[0-9a-f]{12}\s+\d", shown), shown[:3000]


def test_a_failing_verification_leaves_the_tags_untouched(built, stack, tmp_path):
    """A template change whose image leaks a canary fails verification: nothing is pushed,
    no tag moves, and the report names the failure (REG-2)."""
    repo = built["plan"]["tiny-cpu"]["ref"].split("/", 1)[1].rsplit(":", 1)[0]
    before = tags(stack, repo)
    leak = f"aiclipse-canary-leak-{uuid.uuid4().hex}"
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "tests" / "fixtures" / "templates" / "tiny", templates / "tiny")
    workflow = json.loads((templates / "tiny" / "workflows" / "tiny.json").read_text())
    workflow["extra"] = {"token": leak}  # a secret pasted into an example workflow
    (templates / "tiny" / "workflows" / "leak.json").write_text(json.dumps(workflow))
    extra = {
        **built["vars"],
        "aiclipse_templates_dir": str(templates),
        "image_verify_canaries": [CANARY, leak],
    }
    run = playbook("build.yml", extra)
    plan = {
        n["name"]: n
        for n in json.loads((built["tmp"] / "build" / "plan.json").read_text())["nodes"]
    }
    built["refs"].add(plan["tiny-cpu"]["ref"])
    assert run.returncode != 0
    assert plan["tiny-cpu"]["ref"] != built["plan"]["tiny-cpu"]["ref"]
    assert tags(stack, repo) == before  # no hash tag pushed, no release tag moved
    report = latest_report(built)
    assert report["summary"]["failed"] == ["tiny-cpu"] and not report["summary"]["ok"]
    assert report["summary"]["cached"] == ["base-common", "base-cpu"]
    assert report["summary"]["bytes_pushed"] == 0
    failed = next(i for i in report["images"] if i["node"] == "tiny-cpu")
    assert failed["why"].startswith("verification failed: 1 failed")
    assert (
        "tiny-cpu: verification failed"
        in run.stdout[run.stdout.rfind("TASK [Fail when an image") :]
    )
    assert leak not in run.stdout  # the canaries are no_log


def test_one_package_change_rebuilds_its_layer_and_pushes_about_its_bytes(built, stack):
    """aiclipse-test-essential 2.0.0 -> 2.0.1: base-common stays cached; in base-cpu only the
    essentials stage runs (torch's stage is cached); the bytes pushed are about that layer."""
    logs = built["tmp"] / "build" / "logs"
    before_logs = set(logs.iterdir())
    before = {i["node"]: i for i in built["report"]["images"]}  # the first run's layers
    extra = {
        **built["vars"],
        "package_layers": [{"name": "essentials", "specs": ["aiclipse-test-essential==2.0.1"]}],
    }
    run = playbook("build.yml", extra)
    plan = {
        n["name"]: n
        for n in json.loads((built["tmp"] / "build" / "plan.json").read_text())["nodes"]
    }
    built["refs"] |= {plan[n]["ref"] for n in NODES}
    assert run.returncode == 0, run.stdout[-6000:]
    report = latest_report(built)
    assert report["summary"]["cached"] == ["base-common"]
    assert report["summary"]["built"] == ["base-cpu", "tiny-cpu"]
    (new_logs,) = set(logs.iterdir()) - before_logs
    base_log = (new_logs / "level2.base-cpu.log").read_text()
    assert "aiclipse_test_essential-2.0.1" in base_log
    assert "Processing /ctx/wheels/torch" not in base_log  # torch's stage came from the cache
    assert not (new_logs / "level1.base-common.log").exists()
    images = {i["node"]: i for i in report["images"]}
    old = {layer["digest"] for layer in before["base-cpu"]["layers"]}
    new_layers = [layer for layer in images["base-cpu"]["layers"] if layer["digest"] not in old]
    essentials = max(layer["size"] for layer in new_layers)
    assert essentials > 200 * 1024  # the 256 KB blob, gzip could not shrink it
    assert images["base-cpu"]["bytes_pushed"] == sum(layer["size"] for layer in new_layers)
    total = report["summary"]["bytes_pushed"]
    assert total <= 1.1 * essentials, (total, essentials, new_layers)
