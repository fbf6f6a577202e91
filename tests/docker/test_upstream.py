"""The upstream tier (``./farm test upstream``): real ComfyUI, real node packs, real torch.

Every other docker test builds on the ComfyUI stand-in and a stand-in torch. This tier builds
templates end to end (plan, build, verify, push: the whole build.yml) from mirrors of the
real repositories, with the real torch family from its index, and checks in the pushed
template images what a user's pod would meet: ComfyUI's own quick test with zero
``IMPORT FAILED``, every workflow node class in ``/object_info`` (the verification step),
and one matched torch family (torchvision's compiled ops load beside torch).

Inputs (environment):
* ``AICLIPSE_UPSTREAM``: where the mirrors are (tests/upstream.py): a git base URL such as
  ``git://127.0.0.1:9419/`` (``shared/tools/serve-snapshots`` serves fetched snapshots so) or a
  directory of repositories. Without it the tier says so in one line and runs nothing.
* ``AICLIPSE_UPSTREAM_TEMPLATES``: comma-separated templates (default: every shipped
  template plus tests/fixtures/templates/upstream-packs, the heavy node packs).
* ``AICLIPSE_UPSTREAM_TARGETS``: comma-separated targets, each built in its own run
  (default: ``cpu,rtx5090``); a template that does not build for a target is left out of it.
* ``AICLIPSE_UPSTREAM_VARS``: a YAML file of inventory variables over the embedded default
  (the torch family source where the default index is unreachable; see
  tests/upstream/pypi-cu130.yml).
The figures (build seconds and layer sizes per image) are printed and written to the run's
report (reports/latest under the tier's temporary folder); the images are removed after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, docker, playbook

sys.path.insert(0, str(REPO / "tests"))
from upstream import Mirrors, rewrite_template

BASE = os.environ.get("AICLIPSE_UPSTREAM", "")
pytestmark = [
    pytest.mark.upstream,
    pytest.mark.skipif(not BASE, reason="AICLIPSE_UPSTREAM is not set: no mirrors to build"),
]
SHIPPED = REPO / "templates"
EXTRA = REPO / "tests" / "fixtures" / "templates"
EXTRA_TEMPLATES = ("upstream-packs",)


def _templates() -> list[str]:
    wanted = os.environ.get("AICLIPSE_UPSTREAM_TEMPLATES", "")
    if wanted:
        return [name.strip() for name in wanted.split(",") if name.strip()]
    return sorted(p.name for p in SHIPPED.iterdir() if p.is_dir()) + list(EXTRA_TEMPLATES)


def _targets() -> list[str]:
    wanted = os.environ.get("AICLIPSE_UPSTREAM_TARGETS", "cpu,rtx5090")
    return [name.strip() for name in wanted.split(",") if name.strip()]


def _defaults() -> dict:
    merged: dict = {}
    for path in sorted((REPO / "inventory" / "local" / "group_vars" / "all").glob("*.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    extra = os.environ.get("AICLIPSE_UPSTREAM_VARS", "")
    if extra:
        merged.update(yaml.safe_load(Path(extra).read_text()) or {})
    return merged


def _targets_of(template: Path, known: list[str]) -> list[str]:
    data = yaml.safe_load((template / "template.yml").read_text())
    targets = data.get("gpu_targets", "all")
    return known if targets == "all" else [t for t in targets if t in known]


@pytest.fixture(scope="module")
def runs(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstream")
    defaults = _defaults()
    mirrors = Mirrors(BASE, tmp / "mirrors")
    comfy_repo, comfy_ref = mirrors.commit(defaults["comfyui"]["repo"], defaults["comfyui"]["ref"])
    manager = dict(defaults["manager"])
    manager["repo"], manager["ref"] = mirrors.commit(manager["repo"], manager["ref"])
    templates_dir = tmp / "templates"
    for name in _templates():
        src = SHIPPED / name if (SHIPPED / name).is_dir() else EXTRA / name
        rewrite_template(src, templates_dir / name, mirrors)
    known = [t for t in _targets() if t in defaults["gpu_targets"]]
    assert known, f"none of {_targets()} is in gpu_targets ({sorted(defaults['gpu_targets'])})"
    results = []
    for target in known:
        names = [n for n in _templates() if target in _targets_of(templates_dir / n, known)]
        if not names:
            continue
        extra = {
            **stack["vars"],
            "template": ",".join(names),
            "gpu": target,
            "aiclipse_templates_dir": str(templates_dir),
            "aiclipse_build_dir": str(tmp / f"build-{target}"),
            "aiclipse_cache_dir": str(tmp / "cache"),
            "aiclipse_reports_dir": str(tmp / f"reports-{target}"),
            "comfyui": {**defaults["comfyui"], "repo": comfy_repo, "ref": comfy_ref},
            "manager": manager,
            "gpu_targets": defaults["gpu_targets"],
            "package_layers": defaults.get("package_layers", []),
            "package_layers_exclude": defaults.get("package_layers_exclude", []),
            "package_layers_replace": defaults.get("package_layers_replace", {}),
            "build_network": "host",
            "build_ca_bundle": "/etc/ssl/certs/ca-certificates.crt",
            "image_jupyter_spec": "",
        }
        for key in ("cuda_torch_matrix_extra", "image_python_version", "image_platform"):
            if key in defaults:
                extra[key] = defaults[key]
        start = time.monotonic()
        run = playbook("build.yml", extra, timeout=5400)
        seconds = time.monotonic() - start
        report_file = tmp / f"reports-{target}" / "latest" / "report.json"
        report = json.loads(report_file.read_text()) if report_file.exists() else {}
        plan_file = tmp / f"build-{target}" / "plan.json"
        plan = json.loads(plan_file.read_text()) if plan_file.exists() else {"nodes": []}
        results.append(
            {"target": target, "templates": names, "run": run, "seconds": seconds,
             "report": report, "plan": plan}
        )  # fmt: skip
    print("\nupstream mirrors used:")
    for url, (mirror, pin, commit) in sorted(mirrors.used.items()):
        print(f"  {url}@{pin} -> {mirror}@{commit}")
    yield results
    for result in results:
        for node in result["plan"]["nodes"]:
            if node.get("kind") != "os-base" and node.get("ref"):
                docker("rmi", "-f", node["ref"], check=False)
    shutil.rmtree(tmp, ignore_errors=True)


def _template_refs(result) -> list[str]:
    return [n["ref"] for n in result["plan"]["nodes"] if n.get("kind") == "template"]


def test_every_template_builds_verifies_and_pushes(runs):
    for result in runs:
        run = result["run"]
        assert run.returncode == 0, f"{result['target']}: build.yml failed:\n{run.stdout[-8000:]}"
        images = result["report"].get("images", [])
        bad = [i for i in images if i.get("status") in ("failed", "skipped")]
        assert not bad, bad


def test_figures(runs):
    """Not a check: the build time and the compressed layer sizes of every image."""
    for result in runs:
        print(f"\n{result['target']}: build.yml {result['seconds']:.0f} s, {result['templates']}")
        for image in result["report"].get("images", []):
            sizes = [layer.get("size", 0) for layer in image.get("layers", [])]
            print(
                f"  {image.get('node')}: {image.get('status')} build "
                f"{image.get('build_seconds')} s, {len(sizes)} layers, "
                f"{sum(sizes) / 1e6:.1f} MB compressed; largest "
                f"{', '.join(f'{s / 1e6:.1f}' for s in sorted(sizes, reverse=True)[:4])} MB"
            )
    assert runs


def _in(ref: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", cmd[0], ref, *cmd[1:]],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip


def test_comfyui_quick_test_loads_every_node_in_every_image(runs):
    """ComfyUI's own start, read the way a user reads it: zero IMPORT FAILED, zero tracebacks
    of a custom node, and every pinned pack in the import-times block."""
    for result in runs:
        for ref in _template_refs(result):
            run = _in(
                ref, "sh", "-c",
                "cd /opt/ComfyUI && /opt/venv/bin/python main.py --cpu --quick-test-for-ci 2>&1",
            )  # fmt: skip
            out = run.stdout
            assert run.returncode == 0, f"{ref}: exit {run.returncode}\n{out[-4000:]}"
            failed = [line for line in out.splitlines() if "IMPORT FAILED" in line]
            assert not failed, f"{ref}:\n" + "\n".join(failed) + "\n" + out[-6000:]
            assert "Cannot import" not in out, f"{ref}:\n{out[-6000:]}"


def test_the_torch_family_is_one_build(runs):
    """torchvision's compiled ops (nms) and torchaudio load beside the very torch pinned."""
    code = (
        "import json, torch, torchvision, torchaudio;"
        "b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]);"
        "keep = torchvision.ops.nms(b, torch.tensor([1., .5]), .5).tolist();"
        "print(json.dumps([torch.__version__, torchvision.__version__, torchaudio.__version__,"
        " torch.version.cuda, keep]))"
    )
    for result in runs:
        for ref in _template_refs(result):
            run = _in(ref, "/opt/venv/bin/python", "-c", code)
            assert run.returncode == 0, f"{ref}: {run.stderr[-3000:]}"
            last = run.stdout.strip().splitlines()[-1]
            torch_v, vision_v, audio_v, _cuda, keep = json.loads(last)
            assert keep == [0], keep
            variants = {v.partition("+")[2] for v in (torch_v, vision_v, audio_v)}
            assert len(variants) == 1, (torch_v, vision_v, audio_v)
