"""A CUDA target built end to end on a CPU builder: real CUDA 13.0 torch, real torchvision.

The tiny template for ``rtx5090`` (compute capability 12.0) with the real torch 2.14.1
(CUDA 13.0 build, nvidia-* runtime wheels) and torchvision 0.29.1 that this machine's local
index holds (so CI downloads nothing; the matrix row and the family pair come from the
inventory, as a user would add them). build.yml plans, builds, verifies and pushes it; every
check but the GPU ones runs here: torch's CUDA version, ``torch.cuda.get_arch_list()`` holds
code for sm_120 (it answers without a GPU), torchvision's compiled ops run beside that torch,
ComfyUI (the stand-in) loads. The GPU checks (``--gpu``: a matmul on the card) need the card
and run with the GPU smoke script (bench/gpu_smoke.py) on a GPU machine, not here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from gitserver import GitServer, make_comfy_sources
from helpers import REPO, docker, playbook

INDEX = Path(os.environ.get("AICLIPSE_CUDA_INDEX", "/opt/pypi-more/simple"))
TORCH, VISION = "2.14.1", "0.29.1"


def _index_has_torch() -> bool:
    page = INDEX / "torch" / "index.html"
    return page.exists() and f"torch-{TORCH}-" in page.read_text()


pytestmark = pytest.mark.skipif(
    not _index_has_torch() and os.environ.get("AICLIPSE_REQUIRE_DOCKER") != "1",
    reason=f"no local index with torch {TORCH} (CUDA 13.0) at {INDEX}",
)


@pytest.fixture(scope="module")
def cuda_build(stack, tmp_path_factory):
    assert _index_has_torch(), f"CI needs torch {TORCH} in the local index {INDEX}"
    tmp = tmp_path_factory.mktemp("cuda")
    commits = make_comfy_sources(tmp / "git")
    with GitServer(tmp / "git") as server:
        extra = {
            **stack["vars"],
            "template": "tiny",
            "gpu": "rtx5090",
            "aiclipse_templates_dir": str(REPO / "tests" / "fixtures" / "templates"),
            "aiclipse_build_dir": str(tmp / "build"),
            "aiclipse_cache_dir": str(tmp / "cache"),
            "aiclipse_reports_dir": str(tmp / "reports"),
            "comfyui": {"repo": server.url("ComfyUI"), "ref": commits["ComfyUI"]},
            "manager": {"repo": server.url("ComfyUI-Manager"), "ref": commits["ComfyUI-Manager"]},
            "gpu_targets": {
                "rtx5090": {
                    "cuda": "13.0",
                    "torch": TORCH,
                    "torchvision": VISION,
                    "torch_index_url": INDEX.as_uri(),
                    "torch_cuda_arch_list": "12.0",
                }
            },
            # what a user adds for a pair the shipped matrix does not list
            "cuda_torch_matrix_extra": {
                "rows": [
                    {
                        "cuda": "13.0",
                        "torch": TORCH,
                        "index": INDEX.as_uri(),
                        "arch_list": "7.5;8.0;8.6;9.0;10.0;12.0",
                        "ptx": None,
                        "min_driver": "580.65.06",
                    }
                ],
                "families": [{"torch": TORCH, "torchvision": VISION, "torchaudio": None}],
            },
            "package_layers": [],
            "package_layers_exclude": [],
            "build_network": "host",
            "build_ca_bundle": "/etc/ssl/certs/ca-certificates.crt",
            "image_jupyter_spec": "",
        }
        run = playbook("build.yml", extra, timeout=3600)
    plan_file = tmp / "build" / "plan.json"
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else {"nodes": []}
    report_file = tmp / "reports" / "latest" / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    nodes = {n["name"]: n for n in plan["nodes"]}
    yield {"run": run, "plan": plan, "nodes": nodes, "report": report}
    for node in plan["nodes"]:
        if node.get("kind") != "os-base" and node.get("ref"):
            docker("rmi", "-f", node["ref"], check=False)
    shutil.rmtree(tmp, ignore_errors=True)


def _python(ref: str, code: str) -> str:
    return docker("run", "--rm", "--entrypoint", "/opt/venv/bin/python", ref, "-c", code).strip()


def test_the_cuda_target_builds_verifies_and_pushes(cuda_build):
    run = cuda_build["run"]
    assert run.returncode == 0, run.stdout[-8000:]
    statuses = {i["node"]: i["status"] for i in cuda_build["report"]["images"]}
    assert statuses == {
        "os-base": "external",
        "base-common": "built",
        "base-rtx5090": "built",
        "tiny-rtx5090": "built",
    }, statuses
    # verification ran the compiled-arch check and passed it
    assert "passed  tiny-rtx5090" in run.stdout, run.stdout[-4000:]


def test_torch_is_the_cuda_13_build_with_code_for_sm_120(cuda_build):
    ref = cuda_build["nodes"]["tiny-rtx5090"]["ref"]
    out = json.loads(
        _python(
            ref,
            "import json, torch; print(json.dumps([torch.__version__, torch.version.cuda,"
            " torch.cuda.get_arch_list(), torch.cuda.is_available()]))",
        )
    )
    version, cuda, arches, available = out
    assert version.split("+")[0] == TORCH and cuda.startswith("13.0"), out
    assert "sm_120" in arches, arches
    assert available is False  # no GPU on this builder: the GPU checks are for a GPU machine


def test_torchvision_ops_run_beside_that_torch(cuda_build):
    ref = cuda_build["nodes"]["tiny-rtx5090"]["ref"]
    keep = _python(
        ref,
        "import torch, torchvision; b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]);"
        " print(torchvision.__version__, torchvision.ops.nms(b, torch.tensor([1., .5]), .5)"
        ".tolist())",
    )
    version, _, kept = keep.partition(" ")
    assert version.split("+")[0] == VISION and kept == "[0]", keep  # 0.29.1+cu130 [0]
    constraints = docker(
        "run", "--rm", "--entrypoint", "cat", ref, "/opt/aiclipse/constraints.txt"
    )  # fmt: skip
    assert f"torch=={TORCH}" in constraints and f"torchvision=={VISION}" in constraints


def test_the_plan_names_the_missing_torchaudio_and_the_driver_floor(cuda_build):
    plan = cuda_build["plan"]
    notes = " ".join(plan.get("notes", []))
    assert "torchaudio" in notes and "nodes_audio.py" in notes, notes
    assert cuda_build["nodes"]["base-rtx5090"].get("driver_floor") == "580.65.06"
