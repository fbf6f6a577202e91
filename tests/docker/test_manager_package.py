"""ComfyUI-Manager as the ``comfyui-manager`` package (ComfyUI >= 0.4), built for real.

ComfyUI >= 0.4 ships ``manager_requirements.txt`` and installs Manager as the
``comfyui-manager`` PyPI distribution, started with ``--enable-manager``; a clone in
``custom_nodes`` is skipped there. The fixture ComfyUI here gets one commit more that names
the real ``comfyui-manager==4.0.2`` from PyPI (with its dependencies: transformers, uv, ...),
and build.yml runs with ``manager.mode: auto``: the plan must choose the package, lock it with
its dependencies, and the image verification must check the package (not a clone) at that
version. Needs PyPI (AICLIPSE_NETWORK_TESTS=1).
"""

from __future__ import annotations

import json
import os

import pytest
from gitserver import GitServer, commit_all, make_comfy_sources
from helpers import REPO, docker, playbook
from wheels import make_torch_standin, make_wheel

MANAGER = "comfyui-manager==4.0.2"

pytestmark = pytest.mark.skipif(
    os.environ.get("AICLIPSE_NETWORK_TESTS") != "1",
    reason="needs PyPI (comfyui-manager and its dependencies); set AICLIPSE_NETWORK_TESTS=1",
)


@pytest.fixture(scope="module")
def built(stack, tmp_path_factory):
    root = tmp_path_factory.mktemp("git")
    commits = make_comfy_sources(root)
    (root / "ComfyUI" / "manager_requirements.txt").write_text(f"{MANAGER}\n")
    comfy = commit_all(root / "ComfyUI", "ComfyUI >= 0.4: Manager is a package")
    assert comfy != commits["ComfyUI"]
    wheels = tmp_path_factory.mktemp("wheels")
    make_torch_standin(wheels, ("aiclipse-test-dep",))
    make_wheel(wheels, "aiclipse-test-dep", "1.0.0")
    tmp = tmp_path_factory.mktemp("build")
    with GitServer(root) as server:
        extra = {
            **stack["vars"],
            "template": "tiny",
            "gpu": "cpu",
            "aiclipse_templates_dir": str(REPO / "tests" / "fixtures" / "templates"),
            "aiclipse_build_dir": str(tmp / "build"),
            "aiclipse_cache_dir": str(tmp / "cache"),
            "aiclipse_reports_dir": str(tmp / "reports"),
            "comfyui": {"repo": server.url("ComfyUI"), "ref": comfy},
            # set, and yet not used: auto mode takes the package this ComfyUI names
            "manager": {
                "repo": server.url("ComfyUI-Manager"),
                "ref": commits["ComfyUI-Manager"],
                "mode": "auto",
            },
            "gpu_targets": {
                "cpu": {
                    "cuda": "cpu",
                    "torch": "2.13.0",
                    "torch_wheelhouse": str(wheels),
                    "torchvision": "none",
                    "torchaudio": "none",
                }
            },
            "package_layers": [],
            "package_layers_exclude": [],
            "build_network": "host",
            "image_jupyter_spec": "",
        }
        run = playbook("build.yml", extra)
    plan_file = tmp / "build" / "plan.json"
    plan = (
        {n["name"]: n for n in json.loads(plan_file.read_text())["nodes"]}
        if plan_file.exists()
        else {}
    )
    yield {"run": run, "plan": plan, "tmp": tmp}
    for node in plan.values():
        if node["kind"] != "os-base" and node.get("ref"):
            docker("rmi", "-f", node["ref"], check=False)


def test_the_plan_chooses_the_package_and_locks_it(built):
    assert built["run"].returncode == 0, built["run"].stdout[-6000:]
    context = built["tmp"] / "build" / "base-common"
    assert json.loads((context / "manager.json").read_text())["mode"] == "package"
    dockerfile = (context / "Dockerfile").read_text()
    assert "custom_nodes/ComfyUI-Manager" not in dockerfile.split("# Manager's security")[0]
    # locked with ComfyUI's requirements: the comfyui layer of base-cpu, hashed
    layers = built["tmp"] / "build" / "base-cpu" / "layers"
    locked = "".join(p.read_text() for p in sorted(layers.glob("*.txt")))
    assert "comfyui-manager==4.0.2" in locked.lower().replace("_", "-"), sorted(
        p.name for p in layers.iterdir()
    )
    assert "--hash=sha256:" in locked


def test_the_image_holds_the_package_and_no_clone(built):
    assert built["run"].returncode == 0, built["run"].stdout[-3000:]
    ref = built["plan"]["tiny-cpu"]["ref"]
    out = docker(
        "run", "--rm", "--entrypoint", "/bin/sh", ref, "-c",
        "/opt/venv/bin/python -m pip show comfyui-manager | sed -n 2p;"
        " test -e /opt/ComfyUI/custom_nodes/ComfyUI-Manager && echo clone || echo no-clone;"
        " echo $AICLIPSE_MANAGER_MODE",
    ).split()  # fmt: skip
    assert out == ["Version:", "4.0.2", "no-clone", "package"], out


def test_the_verification_checked_the_package(built):
    """image_verify's test_manager_pinned_and_not_weak ran in package mode and passed."""
    assert built["run"].returncode == 0, built["run"].stdout[-3000:]
    xml = (built["tmp"] / "build" / "verify" / "tiny-cpu.xml").read_text()
    assert 'name="test_manager_pinned_and_not_weak' in xml
    assert "<failure" not in xml and "<error" not in xml
