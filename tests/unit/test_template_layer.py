"""A template's ``extra_packages`` is its own package layer: resolved with base-<gpu>'s pins as
constraints, locked with hashes in the template image's context (so in its hash), installed
--no-deps there; a spec that would move a base pin is refused naming both.

Real pip resolves offline against wheels this test makes; ComfyUI's requirements come from
a git repository this test creates.
"""

from __future__ import annotations

import json
from pathlib import Path

import gitserver
import pytest
from ansible.module_utils.config import load_config
from ansible.module_utils.graph import PlanProblems, Settings, make_plan
from ansible.module_utils.package_layers import ResolveOptions
from ansible.module_utils.templates import load_template
from wheels import make_wheel

REPO = Path(__file__).resolve().parents[2]
OS_BASE = "127.0.0.1:5999/t/os-base@sha256:" + "a" * 64
CV2 = {"cv2/__init__.py": "", "cv2/cv2.abi3.so": ""}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("template-layer")
    wheels = root / "wheels"
    make_wheel(wheels, "torch", "2.13.0+cpu")
    make_wheel(wheels, "torchvision", "0.28.0+cpu", ("torch==2.13.0",))
    for version in ("1.26.4", "2.1.0"):
        make_wheel(wheels, "numpy", version)
    make_wheel(wheels, "piexif", "1.1.3")
    make_wheel(wheels, "exif-tools", "2.0", ("numpy<2",))  # a dependency that wants numpy 1
    make_wheel(wheels, "opencv-python-headless", "4.10.0", ("numpy",), files=CV2)
    make_wheel(wheels, "opencv-python", "4.10.0", ("numpy",), files=CV2)
    comfy, manager = gitserver.make_plan_sources(root, "torch\nnumpy\n")
    return {
        "root": root,
        "wheels": wheels,
        "config": {
            "registry": "127.0.0.1:5999/t",
            "gpu_targets": {
                "cpu": {"cuda": "cpu", "torch": "2.13.0", "torch_wheelhouse": str(wheels)},
            },
            "package_layers": [{"name": "vision", "specs": ["opencv-python-headless"]}],
            "comfyui": {"repo": f"file://{root / 'comfyui'}", "ref": comfy},
            "manager": {"repo": f"file://{root / 'manager'}", "ref": manager},
        },
    }


def plan(world, build: Path, extra: list[str]):
    templates = build.parent / f"{build.name}-templates"
    tpl = templates / "tiny"
    (tpl / "workflows").mkdir(parents=True, exist_ok=True)
    (tpl / "template.yml").write_text(
        f"description: tiny\ngpu_targets: all\nextra_packages: {json.dumps(extra)}\n"
    )
    (tpl / "models_manifest.txt").write_text("")
    (tpl / "nodes_manifest.txt").write_text("")
    settings = Settings(
        repo_root=REPO,
        build_dir=build,
        os_base_ref=OS_BASE,
        cache_dir=world["root"] / "cache",
        resolve_options=ResolveOptions(no_index=True, find_links=(str(world["wheels"]),)),
    )
    template = load_template(templates, "tiny")
    return make_plan(load_config(world["config"]), [template], settings, lambda ref: None)


def test_extra_packages_are_the_templates_own_locked_layer(world, tmp_path):
    none = plan(world, tmp_path / "a", [])
    p = plan(world, tmp_path / "b", ["piexif==1.1.3", "numpy>=2"])
    node = p.by_name()["tiny-cpu"]
    # only what base-cpu lacks; numpy (base's) is not installed again
    assert node.layers == [
        {
            "name": "template-tiny",
            "file": "template.txt",
            "count": 1,
            "wheels": "wheels",
            "index_options": "--find-links /ctx/wheels --no-index",
            "pins": ["piexif==1.1.3"],
        }
    ]
    context = tmp_path / "b" / "tiny-cpu"
    assert (
        (context / "layers" / "template.txt").read_text().startswith("piexif==1.1.3 --hash=sha256:")
    )
    assert (context / "wheels" / "piexif-1.1.3-py3-none-any.whl").is_file()
    dockerfile = (context / "Dockerfile").read_text()
    assert "source=layers/template.txt,target=/ctx/requirements.txt" in dockerfile
    assert "pip install --no-deps --no-compile --require-hashes" in dockerfile
    # in the template node's hash, not in base-cpu's
    assert "layers/template.txt" in node.files
    assert none.by_name()["base-cpu"].hash == p.by_name()["base-cpu"].hash
    assert none.by_name()["tiny-cpu"].hash != node.hash
    assert none.by_name()["tiny-cpu"].layers == []


def test_a_spec_that_would_move_a_base_pin_is_refused_naming_both(world, tmp_path):
    with pytest.raises(PlanProblems) as info:
        plan(world, tmp_path / "b", ["numpy<2"])
    message = str(info.value)
    assert message.startswith("cpu: ") and "template.yml extra_packages[0]: 'numpy<2'" in message
    assert "conflicts with base-cpu's pin numpy==2.1.0" in message
    # through a dependency: pip's own words, the template named
    with pytest.raises(PlanProblems) as info:
        plan(world, tmp_path / "c", ["exif-tools"])
    message = str(info.value)
    assert "template.yml extra_packages: ['exif-tools'] cannot be installed beside base-cpu" in (
        message
    )
    assert "exif-tools 2.0 depends on numpy<2" in message
    assert "The user requested (constraint) numpy==2.1.0" in message


def test_a_template_package_that_collides_with_a_base_one_is_refused(world, tmp_path):
    with pytest.raises(PlanProblems) as info:
        plan(world, tmp_path / "b", ["opencv-python"])
    message = str(info.value)
    assert "opencv-python, opencv-python-headless write the same files: cv2/" in message
    assert "template.yml extra_packages.specs[0] ('opencv-python')" in message
