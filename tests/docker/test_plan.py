"""build.yml's plan for real: the registry answers, ComfyUI comes from a loopback git server.

``--check`` prints the plan and writes nothing; a real run writes plan.json and a bake file
that ``docker buildx bake --print`` accepts.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from gitserver import GitServer, make_repo
from helpers import REPO, playbook, recap
from wheels import make_wheel


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("git")
    _, comfy = make_repo(REPO / "tests" / "fixtures" / "comfyui", root / "ComfyUI")
    manager_src = tmp_path_factory.mktemp("manager-src")
    (manager_src / "requirements.txt").write_text("# nothing\n")
    _, manager = make_repo(manager_src, root / "ComfyUI-Manager")
    wheels = tmp_path_factory.mktemp("wheels")
    # A CPU torch stand-in, local-versioned like the real one (+cpu sorts above PyPI's
    # 2.13.0, so pip takes it from the wheelhouse as it does the real CPU wheel)
    make_wheel(wheels, "torch", "2.13.0+cpu", ("filelock",))
    make_wheel(wheels, "filelock", "3.0.0")
    make_wheel(wheels, "pyyaml", "6.0.0")
    with GitServer(root) as server:
        yield {
            "comfyui": {"repo": server.url("ComfyUI"), "ref": comfy},
            "manager": {"repo": server.url("ComfyUI-Manager"), "ref": manager},
            "wheels": str(wheels),
        }


def plan_vars(stack, sources, tmp: Path) -> dict:
    return {
        **stack["vars"],
        "template": "tiny",
        "aiclipse_templates_dir": str(REPO / "tests" / "fixtures" / "templates"),
        "aiclipse_build_dir": str(tmp / "build"),
        "aiclipse_cache_dir": str(tmp / "cache"),
        "comfyui": sources["comfyui"],
        "manager": sources["manager"],
        "gpu_targets": {
            # torch alone: this wheelhouse holds no torchvision (the family's others left out)
            "cpu": {
                "cuda": "cpu",
                "torch": "2.13.0",
                "torch_wheelhouse": sources["wheels"],
                "torchvision": "none",
                "torchaudio": "none",
            }
        },
        "package_layers": [{"name": "essentials", "specs": ["pyyaml"]}],
        "package_layers_exclude": [],
        "aiclipse_build": False,  # the plan only: tests/docker/test_build.py builds
    }


def test_check_prints_the_plan_and_writes_nothing(stack, sources, tmp_path):
    run = playbook("build.yml", plan_vars(stack, sources, tmp_path), "--check")
    assert run.returncode == 0, run.stdout[run.stdout.find("fatal:") :][:3000]
    for node in ("base-common", "base-cpu", "tiny-cpu"):
        assert f"stale   {node}" in run.stdout or f"stale  {node}" in run.stdout, run.stdout
    assert "torch(2), essentials(1)" in run.stdout  # torch + filelock; pyyaml
    assert not (tmp_path / "build").exists()
    assert recap(run.stdout)["localhost"]["changed"] == 0


def test_plan_writes_a_bake_file_buildx_accepts(stack, sources, tmp_path):
    run = playbook("build.yml", plan_vars(stack, sources, tmp_path))
    assert run.returncode == 0, run.stdout[-5000:]
    bake = tmp_path / "build" / "bake.json"
    plan = json.loads((tmp_path / "build" / "plan.json").read_text())
    assert [n["status"] for n in plan["nodes"]] == ["external", "stale", "stale", "stale"]
    printed = subprocess.run(
        ["docker", "buildx", "bake", "--print", "-f", str(bake), "level1", "level2", "level3"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    targets = json.loads(printed.stdout)["target"]
    assert set(targets) == {"base-common", "base-cpu", "tiny-cpu"}
    assert targets["base-common"]["args"]["COMFYUI_COMMIT"] == sources["comfyui"]["ref"]
    assert targets["tiny-cpu"]["labels"]["io.aiclipse.test"] == "tiny"
    again = playbook("build.yml", plan_vars(stack, sources, tmp_path))
    assert again.returncode == 0
    assert recap(again.stdout)["localhost"]["changed"] == 0  # same plan, nothing rewritten


def test_an_unreachable_source_skips_its_nodes_and_the_run_fails_naming_why(
    stack, sources, tmp_path
):
    """ComfyUI's repository does not answer: every node is skipped, with why; the plan task
    itself ran (a `skipped` key in its result would make Ansible call it skipped), and the
    run exits non-zero at its end naming each skipped image and its reason."""
    extra = plan_vars(stack, sources, tmp_path)
    extra["comfyui"] = {"repo": "git://127.0.0.1:9/ComfyUI", "ref": sources["comfyui"]["ref"]}
    run = playbook("build.yml", extra)
    assert run.returncode != 0, run.stdout[-5000:]
    plan_task = run.stdout.split("TASK [Plan tiny]")[1].split("TASK [")[0]
    assert "changed: [localhost]" in plan_task, plan_task
    said = run.stdout.split("TASK [Say which nodes are skipped and why]")[1].split("TASK [")[0]
    assert "base-common: comfyui.repo" in said and "tiny-cpu: base-cpu skipped" in said, said
    end = run.stdout[run.stdout.rfind("TASK [Fail when an image failed") :]
    assert "base-common: skipped: comfyui.repo: cannot fetch git://127.0.0.1:9/ComfyUI" in end, end
    assert "tiny-cpu: skipped: base-cpu skipped" in end, end
    assert "point comfyui.repo at a reachable mirror" in end, end
    assert recap(run.stdout)["localhost"]["failed"] == 1, run.stdout[-3000:]
