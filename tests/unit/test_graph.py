"""The layer graph: contexts, hashes, cached/stale, reasons and the bake file.

Everything is real except the registry, which is a dict here (the docker tier asks a real
one): pip resolves offline against a wheelhouse of small wheels this test makes, and git
reads ComfyUI's requirements from a repository this test creates.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gitserver
import pytest
from ansible.module_utils.config import load_config
from ansible.module_utils.gitsource import GitSourceError
from ansible.module_utils.gpu_matrix import IncompatibleTarget
from ansible.module_utils.graph import (
    BuilderCaps,
    PlanError,
    Settings,
    load_previous,
    make_plan,
    plan_json,
    plan_table,
    weakest,
    write_outputs,
)
from ansible.module_utils.package_layers import ResolveOptions
from ansible.module_utils.templates import TemplateError, load_template
from wheels import make_wheel

REPO = Path(__file__).resolve().parents[2]
OS_BASE = "127.0.0.1:5999/t/os-base@sha256:" + "a" * 64


def make_repo(path: Path, files: dict[str, str]) -> str:
    src = path.with_name(path.name + "-src")
    src.mkdir(parents=True)
    for name, text in files.items():
        (src / name).write_text(text)
    return gitserver.make_repo(src, path)[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    wheels = root / "wheels"
    make_wheel(wheels, "filelock", "3.0.0")
    make_wheel(wheels, "torch", "2.13.0+cpu", ("filelock",))  # local version: %2B in URLs
    make_wheel(wheels, "torch", "2.8.0", ("filelock",))
    # the torch families the matrix pairs with them (torch 2.13 has no torchaudio)
    make_wheel(wheels, "torchvision", "0.28.0+cpu", ("torch==2.13.0",))
    make_wheel(wheels, "torchvision", "0.23.0", ("torch==2.8.0",))
    make_wheel(wheels, "torchaudio", "2.8.0", ("torch==2.8.0",))
    make_wheel(wheels, "numpy", "2.0.0")
    make_wheel(wheels, "numpy", "2.1.0")
    make_wheel(wheels, "pillow", "10.0.0")
    make_wheel(wheels, "pyyaml", "6.0.0")
    make_wheel(wheels, "diffusers", "0.30.0", ("numpy", "pillow"))
    comfy = make_repo(root / "comfyui", {"requirements.txt": "torch\npyyaml\nnumpy\n"})
    manager = make_repo(root / "manager", {"requirements.txt": "# none\n"})
    # a ComfyUI >= 0.4: Manager is the comfyui-manager package its manager_requirements.txt names
    make_wheel(wheels, "comfyui-manager", "4.0.3", ("pyyaml",))
    comfy_pkg = make_repo(
        root / "comfyui-pkg",
        {
            "requirements.txt": "torch\npyyaml\nnumpy\n",
            "manager_requirements.txt": "comfyui_manager==4.0.3\n",
        },
    )
    templates = root / "templates"
    tpl = templates / "tiny"
    (tpl / "workflows").mkdir(parents=True)
    (tpl / "template.yml").write_text("description: tiny\ngpu_targets: all\n")
    (tpl / "models_manifest.txt").write_text("vae http://127.0.0.1:1/v.safetensors\n")
    (tpl / "nodes_manifest.txt").write_text("")
    (tpl / "workflows" / "w.json").write_text(json.dumps({"nodes": [], "links": []}))
    return {
        "root": root,
        "wheels": wheels,
        "templates": templates,
        "comfy_pkg": {"repo": f"file://{root / 'comfyui-pkg'}", "ref": comfy_pkg},
        "config": {
            "registry": "127.0.0.1:5999/t",
            "os_base": {"source": "debootstrap", "suite": "bookworm", "mirror": "http://x"},
            "gpu_targets": {
                "cpu": {"cuda": "cpu", "torch": "2.13.0", "torch_wheelhouse": str(wheels)},
                "rtx4090": {
                    "cuda": "12.8",
                    "torch": "2.8.0",
                    "torch_wheelhouse": str(wheels),
                    "torch_cuda_arch_list": "8.9",
                },
            },
            "package_layers": [
                {"name": "essentials", "specs": ["numpy"]},
                {"name": "extended", "specs": ["diffusers"]},
            ],
            "comfyui": {"repo": f"file://{root / 'comfyui'}", "ref": comfy},
            "manager": {"repo": f"file://{root / 'manager'}", "ref": manager},
        },
    }


def settings_for(world, build: Path, repo_root: Path = REPO, **kw) -> Settings:
    return Settings(
        repo_root=repo_root,
        build_dir=build,
        os_base_ref=OS_BASE,
        cache_dir=world["root"] / "cache",
        resolve_options=ResolveOptions(no_index=True, find_links=(str(world["wheels"]),)),
        **kw,
    )


def plan(world, build, config=None, lookup=None, previous=None, repo_root=REPO, **kw):
    cfg = load_config(config or world["config"])
    tpl = load_template(world["templates"], "tiny")
    return make_plan(
        cfg,
        [tpl],
        settings_for(world, build, repo_root, **kw),
        lookup or (lambda ref: None),
        previous=previous,
    )


def hashes(p) -> dict[str, str]:
    return {node.name: node.hash for node in p.nodes}


def test_graph_has_every_node_with_parents(world, tmp_path):
    p = plan(world, tmp_path / "b")
    assert [(n.name, n.parent) for n in p.nodes] == [
        ("os-base", None),
        ("base-common", "os-base"),
        ("base-cpu", "base-common"),
        ("tiny-cpu", "base-cpu"),
        ("base-rtx4090", "base-common"),
        ("tiny-rtx4090", "base-rtx4090"),
    ]
    assert all(n.status == "stale" for n in p.nodes[1:])


def test_layers_have_no_overlap_and_torch_comes_first(world, tmp_path):
    p = plan(world, tmp_path / "b")
    base = p.by_name()["base-cpu"]
    names = [pin.split("==")[0] for layer in base.layers for pin in layer["pins"]]
    assert len(names) == len(set(names))
    first = base.layers[0]
    assert first["name"] == "torch" and "torch==2.13.0+cpu" in first["pins"]
    assert "filelock==3.0.0" in first["pins"]  # torch's dependency lives in torch's layer
    comfy = next(layer for layer in base.layers if layer["name"] == "comfyui")
    assert "pyyaml==6.0.0" in comfy["pins"] and not any("torch" in p for p in comfy["pins"])
    lists = sorted((tmp_path / "b" / "base-cpu" / "layers").iterdir())
    # essentials is empty (comfyui took numpy first): no file, and the numbers stay put
    assert [f.name for f in lists] == ["01-torch.txt", "02-comfyui.txt", "04-extended.txt"]
    assert "--hash=sha256:" in lists[0].read_text()
    wheels = tmp_path / "b" / "base-cpu" / "wheels"
    # each stage mounts its own folder of wheels, so one layer's change keys no other stage
    assert (wheels / "01-torch" / "torch-2.13.0+cpu-py3-none-any.whl").exists()
    assert not (wheels / "02-comfyui" / "torch-2.13.0+cpu-py3-none-any.whl").exists()
    dockerfile = (tmp_path / "b" / "base-cpu" / "Dockerfile").read_text()
    assert "source=layers/01-torch.txt,target=/ctx/requirements.txt" in dockerfile
    assert "source=wheels/01-torch,target=/ctx/wheels" in dockerfile


def test_same_inputs_same_hashes_at_other_paths(world, tmp_path):
    """BLD-7: two copies of the project at different paths plan the same hashes."""
    copies = []
    for name in ("one", "two-deeper/x"):
        dest = tmp_path / name / "repo"
        for part in ("roles/image_build/templates", "runtime", "playbooks/vars"):
            shutil.copytree(REPO / part, dest / part)
        (dest / "module_utils").mkdir()
        shutil.copy(REPO / "module_utils" / "manifests.py", dest / "module_utils")
        copies.append(hashes(plan(world, tmp_path / name / "build", repo_root=dest)))
    assert copies[0] == copies[1]


def test_planning_twice_gives_the_same_hashes(world, tmp_path):
    assert hashes(plan(world, tmp_path / "b")) == hashes(plan(world, tmp_path / "b"))


def test_changing_one_layer_touches_only_what_is_after_it(world, tmp_path):
    before = hashes(plan(world, tmp_path / "b"))
    config = json.loads(json.dumps(world["config"]))
    config["package_layers"][1]["specs"] = ["diffusers", "pillow==10.0.0"]
    config["gpu_targets"]["cpu"]["torch_wheelhouse"] = str(world["wheels"])
    after = hashes(plan(world, tmp_path / "b", config=config))
    assert before["base-common"] == after["base-common"]
    # pillow was already in `extended` through diffusers: its pinned list did not change
    assert before["base-cpu"] == after["base-cpu"]
    config["package_layers"][0]["specs"] = ["numpy==2.0.0"]
    changed = hashes(plan(world, tmp_path / "b", config=config))
    assert changed["base-common"] == before["base-common"]
    assert changed["base-cpu"] != before["base-cpu"]
    assert changed["tiny-cpu"] != before["tiny-cpu"]


def test_cached_nodes_are_not_in_the_bake_file(world, tmp_path):
    first = plan(world, tmp_path / "b")
    present = {first.by_name()[n].ref: "sha256:" + "b" * 64 for n in ("base-common", "base-cpu")}
    p = plan(world, tmp_path / "b", lookup=present.get)
    status = {n.name: n.status for n in p.nodes}
    assert status["base-common"] == status["base-cpu"] == "cached"
    assert set(p.bake["target"]) == {"tiny-cpu", "base-rtx4090", "tiny-rtx4090"}
    assert p.bake["group"]["level3"]["targets"] == ["tiny-cpu", "tiny-rtx4090"]
    tiny = p.bake["target"]["tiny-cpu"]
    assert tiny["args"]["PARENT"] == p.by_name()["base-cpu"].ref
    assert tiny["secret"] == ["id=ca,src=/etc/ssl/certs/ca-certificates.crt"]
    assert "contexts" not in tiny  # parent cached: referenced by its hash tag


def test_everything_cached_means_an_empty_bake(world, tmp_path):
    first = plan(world, tmp_path / "b")
    present = {n.ref: "sha256:" + "c" * 64 for n in first.nodes[1:]}
    p = plan(world, tmp_path / "b", lookup=present.get)
    assert p.stale == [] and p.bake["target"] == {}


def test_named_contexts_link_stale_parents_when_the_builder_can(world, tmp_path):
    caps = BuilderCaps(copy_link=True, named_contexts=True, cache_export=("inline", "registry"))
    p = plan(world, tmp_path / "b", caps=caps)
    target = p.bake["target"]["base-cpu"]
    common = p.by_name()["base-common"]
    assert target["contexts"] == {common.ref: "target:base-common"}
    assert target["cache-to"] == [f"type=registry,ref={common.image}:cache-base-cpu,mode=max"]
    assert "COPY --link --from=layer-torch" in (tmp_path / "b/base-cpu/Dockerfile").read_text()


def test_a_fleet_bakes_for_its_weakest_builder_and_loads_from_container_builders(world, tmp_path):
    new = {"copy_link": True, "cache_export": ["inline", "registry", "local"], "driver": "docker"}
    old = {"copy_link": False, "cache_export": ["inline"], "driver": "docker"}
    box = {"copy_link": True, "cache_export": ["registry", "inline"], "driver": "docker-container"}
    assert weakest([new, old]) == BuilderCaps()
    assert weakest([new, box]) == BuilderCaps(True, True, ("inline", "registry"), load=True)
    assert weakest([]) == weakest([{}]) == BuilderCaps()
    p = plan(world, tmp_path / "b", caps=weakest([box]))
    assert p.bake["target"]["base-cpu"]["output"] == ["type=docker"]  # into the engine
    assert (
        "output" not in plan(world, tmp_path / "c", caps=weakest([new])).bake["target"]["base-cpu"]
    )


def test_reasons_name_the_changed_input(world, tmp_path):
    build = tmp_path / "b"
    first = plan(world, build)
    write_outputs(first, settings_for(world, build))
    previous = load_previous(build / "plan.json")
    wf = world["templates"] / "tiny" / "workflows" / "w.json"
    original = wf.read_text()
    wf.write_text(json.dumps({"nodes": [], "links": [], "extra": {}}))
    try:
        p = plan(world, build, previous=previous)
    finally:
        wf.write_text(original)
    reasons = {n.name: n.reason for n in p.nodes}
    assert reasons["tiny-cpu"] == "workflows/w.json changed"
    assert reasons["base-cpu"] == "not in the registry (inputs unchanged)"
    assert "tiny-cpu" in plan_table(p) and "workflows/w.json changed" in plan_table(p)


def test_plan_json_round_trips(world, tmp_path):
    p = plan(world, tmp_path / "b")
    data = plan_json(p, settings_for(world, tmp_path / "b", date_tag="20261123"))
    tiny = next(n for n in data["nodes"] if n["name"] == "tiny-cpu")
    assert tiny["release_tags"] == ["tiny-cpu", "tiny-cpu-20261123"]
    assert tiny["parent_hash"] == p.by_name()["base-cpu"].hash
    os_base = next(n for n in data["nodes"] if n["name"] == "os-base")
    assert (os_base["status"], os_base["ref"]) == ("external", OS_BASE)  # what it resolved to


def test_rtx5090_with_cuda_12_4_is_refused_before_anything_builds(world, tmp_path):
    config = json.loads(json.dumps(world["config"]))
    config["gpu_targets"]["rtx5090"] = {
        "cuda": "12.4",
        "torch": "2.5.1",
        "torch_index_url": "https://download.pytorch.org/whl/cu124",
        "torch_cuda_arch_list": "12.0",
    }
    with pytest.raises(IncompatibleTarget, match=r"sm_120 needs CUDA >= 12.8"):
        plan(world, tmp_path / "b", config=config)
    assert not (tmp_path / "b").exists()


def test_a_branch_as_comfyui_ref_is_refused(world, tmp_path):
    config = json.loads(json.dumps(world["config"]))
    config["comfyui"]["ref"] = "master"
    with pytest.raises(GitSourceError, match=r"comfyui.ref: 'master' is not a full 40-hex"):
        plan(world, tmp_path / "b", config=config)


def test_unreachable_comfyui_repo_skips_everything_and_says_why(world, tmp_path):
    config = json.loads(json.dumps(world["config"]))
    config["comfyui"]["repo"] = "git://127.0.0.1:9/nothing.git"
    p = plan(world, tmp_path / "b", config=config)
    status = {n.name: (n.status, n.reason) for n in p.nodes[1:]}
    assert status["base-common"][0] == "skipped"
    assert status["base-common"][1].startswith("comfyui.repo: cannot fetch git://127.0.0.1:9")
    assert status["tiny-cpu"] == ("skipped", "base-cpu skipped")
    assert p.bake["target"] == {}
    assert {item["node"] for item in p.skipped} == set(status)
    assert {item["kind_of_skip"] for item in p.skipped} == {"failure"}  # the run fails on it


def test_a_target_that_cannot_resolve_is_skipped_the_others_planned(world, tmp_path):
    config = json.loads(json.dumps(world["config"]))
    config["gpu_targets"]["rtx4090"]["torch"] = "2.9.0"  # no such wheel in the wheelhouse
    p = plan(world, tmp_path / "b", config=config)
    status = {n.name: n.status for n in p.nodes[1:]}
    assert status == {
        "base-common": "stale",
        "base-cpu": "stale",
        "tiny-cpu": "stale",
        "base-rtx4090": "skipped",
        "tiny-rtx4090": "skipped",
    }
    reason = p.by_name()["base-rtx4090"].reason
    assert reason.startswith("package layers: pip could not resolve") and "torch" in reason
    assert set(p.bake["target"]) == {"base-common", "base-cpu", "tiny-cpu"}
    assert "skipped  base-rtx4090  -" in plan_table(p)


def test_unknown_template_lists_the_ones_that_exist(world):
    with pytest.raises(TemplateError, match=r"tiny"):
        load_template(world["templates"], "tinny")


# ---------------------------------------------------------------------------------------------
# ComfyUI-Manager: the package where the pinned ComfyUI names it, else the pinned clone


def manager_config(world, comfyui: dict | None = None, **manager) -> dict:
    config = json.loads(json.dumps(world["config"]))
    if comfyui:
        config["comfyui"] = comfyui
    if manager:
        config["manager"] = {k: v for k, v in {**config["manager"], **manager}.items() if v}
    return config


def test_manager_is_a_pinned_clone_where_comfyui_has_no_manager_requirements(world, tmp_path):
    p = plan(world, tmp_path / "b")
    common = p.by_name()["base-common"]
    assert common.args["MANAGER_MODE"] == "git"
    assert common.args["MANAGER_COMMIT"] == world["config"]["manager"]["ref"]
    dockerfile = (tmp_path / "b" / "base-common" / "Dockerfile").read_text()
    assert 'clone --quiet --no-checkout "$MANAGER_REPO"' in dockerfile
    assert "ARG MANAGER_MODE=git" in dockerfile and "comfyui-manager" not in dockerfile
    assert p.bake["target"]["base-common"]["args"]["MANAGER_MODE"] == "git"


def test_manager_is_the_package_comfyui_names_locked_with_its_requirements(world, tmp_path):
    # auto, and no repo/ref at all: ComfyUI's manager_requirements.txt decides
    config = manager_config(world, world["comfy_pkg"], repo="", ref="", security_level="strong")
    p = plan(world, tmp_path / "b", config=config)
    common = p.by_name()["base-common"]
    assert common.status == "stale"
    assert common.args == {
        "COMFYUI_REPO": world["comfy_pkg"]["repo"],
        "COMFYUI_COMMIT": world["comfy_pkg"]["ref"],
        "MANAGER_MODE": "package",
    }
    dockerfile = (tmp_path / "b" / "base-common" / "Dockerfile").read_text()
    assert "ARG MANAGER_MODE=package" in dockerfile
    assert "ENV AICLIPSE_MANAGER_MODE=${MANAGER_MODE}" in dockerfile  # start.sh: --enable-manager
    assert "custom_nodes/ComfyUI-Manager" not in dockerfile and "MANAGER_REPO" not in dockerfile
    assert "# Manager: comfyui_manager==4.0.3" in dockerfile
    ini = (tmp_path / "b" / "base-common" / "manager-config.ini").read_text()
    assert "security_level = strong" in ini
    # the package and its dependencies are in the one resolution, in ComfyUI's layer
    for target in ("base-cpu", "base-rtx4090"):
        comfy = next(x for x in p.by_name()[target].layers if x["name"] == "comfyui")
        assert "comfyui-manager==4.0.3" in comfy["pins"] and "pyyaml==6.0.0" in comfy["pins"]
    assert (
        "comfyui-manager==4.0.3"
        in (tmp_path / "b" / "base-cpu" / "layers" / "02-comfyui.txt").read_text()
    )


def test_the_manager_mode_is_in_the_hash(world, tmp_path):
    pkg = world["comfy_pkg"]
    package = plan(world, tmp_path / "p", config=manager_config(world, pkg))
    forced = plan(world, tmp_path / "g", config=manager_config(world, pkg, mode="git"))
    assert forced.by_name()["base-common"].args["MANAGER_MODE"] == "git"  # forced: a clone
    a, b = hashes(package), hashes(forced)
    for node in ("base-common", "base-cpu", "tiny-cpu"):
        assert a[node] != b[node], node
    assert "not in the registry" in package.by_name()["base-common"].reason
    again = plan(world, tmp_path / "p", config=manager_config(world, pkg))
    assert hashes(again) == a


def test_package_mode_needs_a_comfyui_that_ships_manager_requirements(world, tmp_path):
    config = manager_config(world, mode="package", repo="", ref="")
    with pytest.raises(PlanError, match=r"manager.mode: package, but ComfyUI at [0-9a-f]{40} "
                       r"\(comfyui.ref\) has no manager_requirements.txt"):  # fmt: skip
        plan(world, tmp_path / "b", config=config)
    config = manager_config(world, repo="", ref="")  # auto: a clone, but of what?
    with pytest.raises(PlanError, match=r"^manager.repo: ComfyUI at .* no manager_requirements"):
        plan(world, tmp_path / "b", config=config)
