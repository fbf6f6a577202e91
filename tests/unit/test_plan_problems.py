"""The plan names every problem of a configuration at once: files written twice (from the
wheels' RECORDs), overrides that contradict a spec or the torch family, a layer left empty.

Real pip resolves offline against wheels this test makes; the RECORD files are the wheels'
own; ComfyUI's requirements come from a git repository this test creates.
"""

from __future__ import annotations

import json
from pathlib import Path

import gitserver
import pytest
from ansible.module_utils.config import ConfigErrors, load_config
from ansible.module_utils.graph import PlanProblems, Settings, make_plan
from ansible.module_utils.package_layers import ResolveOptions
from ansible.module_utils.templates import load_template
from wheels import make_wheel

REPO = Path(__file__).resolve().parents[2]
OS_BASE = "127.0.0.1:5999/t/os-base@sha256:" + "a" * 64
CV2 = {"cv2/__init__.py": "", "cv2/cv2.abi3.so": "plain", "cv2/data/__init__.py": ""}
CV2_CONTRIB = {**CV2, "cv2/cv2.abi3.so": "contrib", "cv2/ximgproc/__init__.py": ""}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("problems")
    wheels = root / "wheels"
    make_wheel(wheels, "torch", "2.13.0+cpu")
    make_wheel(wheels, "torchvision", "0.28.0+cpu", ("torch==2.13.0",))
    make_wheel(wheels, "numpy", "2.1.0")
    make_wheel(wheels, "pyyaml", "6.0.0")
    make_wheel(wheels, "opencv-python-headless", "4.10.0", ("numpy",), files=CV2)
    make_wheel(wheels, "opencv-contrib-python-headless", "4.10.0", ("numpy",), files=CV2_CONTRIB)
    make_wheel(wheels, "albu", "1.0", ("opencv-python-headless", "numpy"))
    make_wheel(wheels, "facer", "1.0", ("opencv-contrib-python-headless",))
    comfy, manager = gitserver.make_plan_sources(root, "torch\npyyaml\nnumpy\n")
    gitserver.make_empty_template(root / "templates")
    return {
        "root": root,
        "wheels": wheels,
        "templates": root / "templates",
        "config": {
            "registry": "127.0.0.1:5999/t",
            "gpu_targets": {
                "cpu": {"cuda": "cpu", "torch": "2.13.0", "torch_wheelhouse": str(wheels)},
            },
            "package_layers": [
                {"name": "vision", "specs": ["opencv-python-headless", "albu"]},
                {"name": "faces", "specs": ["facer"]},
            ],
            "comfyui": {"repo": f"file://{root / 'comfyui'}", "ref": comfy},
            "manager": {"repo": f"file://{root / 'manager'}", "ref": manager},
        },
    }


def plan(world, build: Path, config: dict):
    settings = Settings(
        repo_root=REPO,
        build_dir=build,
        os_base_ref=OS_BASE,
        cache_dir=world["root"] / "cache",
        resolve_options=ResolveOptions(no_index=True, find_links=(str(world["wheels"]),)),
    )
    tpl = load_template(world["templates"], "tiny")
    return make_plan(load_config(config), [tpl], settings, lambda ref: None)


def edited(world, **changes) -> dict:
    config = json.loads(json.dumps(world["config"]))
    config.update(changes)
    return config


def pins(p, node: str = "base-cpu") -> list[str]:
    return [pin for layer in p.by_name()[node].layers for pin in layer["pins"]]


def test_a_collision_is_refused_naming_the_files_and_the_line_that_settles_it(world, tmp_path):
    with pytest.raises(PlanProblems) as info:
        plan(world, tmp_path / "b", world["config"])
    message = str(info.value)
    assert message.startswith(
        "cpu: opencv-contrib-python-headless, opencv-python-headless write the same files: cv2/ "
        "(cv2/__init__.py, cv2/cv2.abi3.so, cv2/data/__init__.py)"
    )
    # why each is there, and which to keep: the one that writes every file the other does
    assert "opencv-contrib-python-headless (required by facer)" in message
    assert (
        "opencv-python-headless (requested by package_layers[0] (vision).specs[0] "
        "('opencv-python-headless'); required by albu)" in message
    )
    assert (
        "Fix: keep opencv-contrib-python-headless (it writes every file the others do): drop "
        "package_layers[0] (vision).specs[0] ('opencv-python-headless') and add to "
        "package_layers_replace: `opencv-python-headless: opencv-contrib-python-headless`"
    ) in message
    assert not (tmp_path / "b" / "bake.json").exists()

    # the configuration the message asks for plans, with one cv2 owner
    layers = [{"name": "vision", "specs": ["albu"]}, {"name": "faces", "specs": ["facer"]}]
    replace = {"opencv-python-headless": "opencv-contrib-python-headless"}
    p = plan(
        world, tmp_path / "b", edited(world, package_layers=layers, package_layers_replace=replace)
    )
    names = [pin.split("==")[0] for pin in pins(p)]
    assert "opencv-contrib-python-headless" in names and "opencv-python-headless" not in names


def test_every_problem_is_reported_in_one_round(world, tmp_path):
    config = edited(
        world,
        package_layers=[
            {"name": "pak1", "specs": ["pyyaml"]},  # emptied by ComfyUI's layer: a note
            {"name": "pak2", "specs": ["albu"]},
            {"name": "pak3", "specs": ["facer", "numpy>=2"]},
        ],
        package_layers_exclude=["numpy", "torchvision"],
    )
    with pytest.raises(PlanProblems) as info:
        plan(world, tmp_path / "b", config)
    problems = info.value.problems
    # before the resolver: the family member excluded, the spec the exclusion contradicts
    # (its layer named by its name and position in package_layers, not in the plan)
    assert problems[0].startswith("cpu: package_layers_exclude names torchvision, a member")
    assert problems[1].startswith(
        "cpu: ComfyUI's requirements (comfyui.ref).specs[1]: requests 'numpy', which "
        "package_layers_exclude removes"
    )
    assert problems[2].startswith(
        "cpu: package_layers[2] (pak3).specs[1]: requests 'numpy>=2', which "
        "package_layers_exclude removes"
    )
    # after it, in the same round: the collision
    assert "write the same files: cv2/" in problems[3]
    assert len(problems) == 4
    assert str(info.value).startswith("the plan has 4 problems:\n- cpu: package_layers_exclude")


def test_a_layer_left_empty_is_noted(world, tmp_path):
    layers = [
        {"name": "pak1", "specs": ["pyyaml"]},
        {"name": "faces", "specs": ["facer"]},
    ]
    p = plan(world, tmp_path / "b", edited(world, package_layers=layers))
    assert [layer["name"] for layer in p.by_name()["base-cpu"].layers] == [
        "torch",
        "comfyui",
        "faces",
    ]
    assert (
        "cpu: package_layers[0] (pak1) is empty: every distribution it needs is installed by an "
        "earlier layer (torch, comfyui); it builds no stage"
    ) in p.notes


def test_every_spec_problem_of_the_layers_at_once(world):
    config = edited(
        world,
        package_layers=[
            {"name": "pak1", "specs": ["omegaconf", "numpy=="]},
            {"name": "pak2", "specs": ["pillow"]},
            {"name": "pak3", "specs": ["OmegaConf>=2", "pillow"]},
        ],
    )
    with pytest.raises(ConfigErrors) as info:
        load_config(config)
    lines = [str(error) for error in info.value.errors]
    assert len(lines) == 3 and str(info.value) == "\n".join(lines)
    assert lines[0].startswith("package_layers[0].specs[1]: 'numpy==' is not a pip requirement")
    assert lines[1] == (
        "package_layers[2].specs[0]: OmegaConf (layer pak3) is already requested by "
        "package_layers[0].specs[0] (layer pak1: 'omegaconf'). Fix: request each distribution "
        "in one layer only (the first that needs it)"
    )
    assert lines[2].startswith("package_layers[2].specs[1]: pillow (layer pak3) is already")
