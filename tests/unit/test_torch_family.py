"""module_utils/torch_family.py: the torch family is one unit per target.

Defaults and refusals from the matrix's families data, the variant check on synthetic
resolutions (package_layers data classes), the notes, and one plan made for real against a
wheelhouse of small wheels (pip offline), where spandrel pulls the wrong torchvision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gitserver
import pytest
from ansible.module_utils.config import load_config
from ansible.module_utils.gpu_matrix import Matrix, load_matrix_file
from ansible.module_utils.graph import Settings, make_plan, plan_json, plan_table
from ansible.module_utils.package_layers import (
    Dep,
    Layer,
    Resolution,
    ResolvedDist,
    ResolveOptions,
    constraints_text,
    target_environment,
)
from ansible.module_utils.templates import load_template
from ansible.module_utils.torch_family import (
    TORCHAUDIO_NODES,
    FamilyError,
    MixedFamily,
    TorchFamily,
    check_resolution,
    dropped_line_notes,
    family_for,
    family_notes,
    family_pins,
    requires_from_report,
    split_family_lines,
    variant,
)
from wheels import make_wheel

REPO = Path(__file__).resolve().parents[2]
MATRIX_FILE = REPO / "playbooks" / "vars" / "cuda_torch_matrix.yml"
ENV = tuple(sorted(target_environment("3.11", "manylinux_2_36_x86_64").items()))
BASE_CONFIG: dict[str, Any] = {
    "comfyui": {"repo": "https://example.invalid/c.git", "ref": "a" * 40},
    "manager": {"repo": "https://example.invalid/m.git", "ref": "b" * 40},
}


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return load_matrix_file(MATRIX_FILE)


def targets(**gpu_targets: dict[str, Any]):
    return load_config({**BASE_CONFIG, "gpu_targets": gpu_targets})


def one(name: str = "rtx5090", **fields: Any):
    values = {"cuda": "13.0", "torch": "2.11.0", "torch_cuda_arch_list": "12.0", **fields}
    return targets(**{name: values}).target(name)


def cpu(**fields: Any):
    values = {"cuda": "cpu", "torch": "2.13.0", **fields}
    return targets(cpu=values).target("cpu")


def dist(name: str, version: str, *deps: str, url: str = "") -> ResolvedDist:
    return ResolvedDist(name, version, tuple(Dep(d) for d in deps), url=url, sha256="0" * 64)


def resolution(*dists: ResolvedDist) -> Resolution:
    return Resolution(dists=tuple(sorted(dists, key=lambda d: d.name)), environment=ENV)


# --- the family of a target ------------------------------------------------------------------


def test_omitted_members_come_from_the_families_data(matrix: Matrix) -> None:
    family = family_for(one(), matrix)
    assert (family.torchvision, family.torchaudio) == ("0.26.0", "2.11.0")
    assert family.specs() == ["torch==2.11.0", "torchvision==0.26.0", "torchaudio==2.11.0"]


def test_null_torchaudio_in_the_data_leaves_it_out_and_says_why(matrix: Matrix) -> None:
    family = family_for(cpu(), matrix)
    assert (family.torchvision, family.torchaudio) == ("0.28.0", None)
    assert family.specs() == ["torch==2.13.0", "torchvision==0.28.0"]
    assert "no torchaudio exists for torch 2.13.0" in family.no_audio_reason


def test_an_explicit_member_must_match_the_known_pair(matrix: Matrix) -> None:
    assert family_for(one(torchvision="0.26.0"), matrix).torchvision == "0.26.0"
    with pytest.raises(FamilyError) as info:
        family_for(one(torchvision="0.25.0"), matrix)
    message = str(info.value)
    assert "gpu_targets.rtx5090.torchvision is '0.25.0'" in message
    assert "torch 2.11.0 + torchvision 0.26.0 + torchaudio 2.11.0" in message
    assert "set gpu_targets.rtx5090.torchvision: '0.26.0'" in message
    assert "cuda_torch_matrix_extra.families" in message
    with pytest.raises(FamilyError, match=r"gpu_targets\.cpu\.torchaudio is '2\.11\.0'.*none"):
        family_for(cpu(torchaudio="2.11.0"), matrix)  # the data knows no torchaudio for 2.13


def test_the_inventory_can_add_the_pair(matrix: Matrix) -> None:
    extra = {"families": [{"torch": "2.13.0", "torchvision": "0.28.0", "torchaudio": "2.11.0"}]}
    merged = load_matrix_file(MATRIX_FILE, extra)
    assert family_for(cpu(torchaudio="2.11.0"), merged).torchaudio == "2.11.0"


def test_an_unknown_torch_needs_the_pair_or_none(matrix: Matrix) -> None:
    target = one(cuda="13.2", torch="2.15.0")
    with pytest.raises(FamilyError) as info:
        family_for(target, matrix)
    assert "knows no family for torch 2.15.0" in str(info.value)
    assert "cuda_torch_matrix_extra.families" in str(info.value)
    with pytest.raises(FamilyError, match=r"gpu_targets\.rtx5090\.torchvision name versions"):
        family_for(one(cuda="13.2", torch="2.15.0", torchvision="0.30.0"), matrix)
    alone = family_for(
        one(cuda="13.2", torch="2.15.0", torchvision="none", torchaudio="none"), matrix
    )
    assert alone.specs() == ["torch==2.15.0"]


def test_none_leaves_a_member_out_on_purpose(matrix: Matrix) -> None:
    family = family_for(one(torchaudio="none"), matrix)
    assert family.torchaudio is None and family.torchvision == "0.26.0"
    assert family.no_audio_reason == "gpu_targets.rtx5090.torchaudio is none"


def test_torch_extra_joins_the_torch_layer_and_the_constraints(matrix: Matrix) -> None:
    family = family_for(one(torch_extra=["xformers[extra]==0.0.33", "triton==3.5.0"]), matrix)
    assert family.specs()[-2:] == ["xformers[extra]==0.0.33", "triton==3.5.0"]
    assert "xformers==0.0.33" in family.constraint_lines()  # constraints carry no extras
    assert family.names == ("torch", "torchvision", "torchaudio", "xformers", "triton")


def test_constraints_pin_the_whole_family_for_later_installs() -> None:
    torch_layer = Layer(
        "torch",
        (
            dist("torch", "2.11.0+cpu"),
            dist("torchaudio", "2.11.0+cpu"),
            dist("torchvision", "0.26.0+cpu"),
            dist("xformers", "0.0.33"),
        ),
    )
    text = constraints_text([torch_layer, Layer("comfyui", (dist("spandrel", "0.4.1"),))])
    for pin in ("torch==2.11.0+cpu", "torchvision==0.26.0+cpu", "torchaudio==2.11.0+cpu"):
        assert f"{pin}\n" in text
    assert "xformers==0.0.33\n" in text and "spandrel==0.4.1\n" in text


# --- one build variant -----------------------------------------------------------------------


def test_variant_is_the_local_label() -> None:
    assert (variant("2.13.0+cpu"), variant("2.8.0+cu128"), variant("2.11.0")) == (
        "cpu",
        "cu128",
        "",
    )


def test_an_unlabelled_torchvision_pulled_by_spandrel_is_refused_naming_it() -> None:
    family = TorchFamily("cpu", "2.13.0", None, None)  # the old cpu target: torch alone
    graph = resolution(
        dist("torch", "2.13.0+cpu"),
        dist("torchvision", "0.28.0", "torch"),
        dist("spandrel", "0.4.1", "torch", "torchvision"),
    )
    with pytest.raises(MixedFamily) as info:
        check_resolution(family, graph)
    message = str(info.value)
    assert "torch 2.13.0+cpu (+cpu) but torchvision 0.28.0 (no local label" in message
    assert "required by spandrel" in message and "spandrel pulled the wrong" in message
    assert (
        "give gpu_targets.cpu a torch_index_url (or torch_wheelhouse) that serves "
        "torchvision 0.28.0+cpu, or pin torch to a CUDA build"
    ) in message


def test_a_pinned_member_of_another_variant_is_refused_too() -> None:
    family = TorchFamily("rtx5090", "2.11.0", "0.26.0", "2.11.0")
    graph = resolution(
        dist("torch", "2.11.0"),
        dist("torchvision", "0.26.0", "torch"),
        dist("torchaudio", "2.11.0+cpu", "torch"),
    )
    with pytest.raises(MixedFamily) as info:
        check_resolution(family, graph)
    assert "the target's family pin torchaudio==2.11.0" in str(info.value)
    assert "serves torch 2.11.0+cpu as well, or drop the index" in str(info.value)


def test_one_variant_passes() -> None:
    family = TorchFamily("cpu", "2.11.0", "0.26.0", "2.11.0", ("xformers==0.0.33",))
    graph = resolution(
        dist("torch", "2.11.0+cpu"),
        dist("torchvision", "0.26.0+cpu", "torch"),
        dist("torchaudio", "2.11.0+cpu", "torch"),
        dist("xformers", "0.0.33+cpu", "torch"),
        dist("numpy", "2.1.0"),  # not a family member: no label needed
    )
    assert check_resolution(family, graph) is None


def test_an_extra_of_another_variant_is_refused() -> None:
    family = TorchFamily("rtx4090", "2.8.0", "0.23.0", "2.8.0", ("xformers==0.0.32",))
    graph = resolution(
        dist("torch", "2.8.0+cu128"),
        dist("torchvision", "0.23.0+cu128", "torch"),
        dist("torchaudio", "2.8.0+cu128", "torch"),
        dist("xformers", "0.0.32", "torch"),
    )
    with pytest.raises(MixedFamily, match=r"but xformers 0\.0\.32 \(no local label"):
        check_resolution(family, graph)


def test_a_requires_dist_pinning_another_torch_is_refused() -> None:
    family = TorchFamily("rtx5090", "2.11.0", "0.26.0", "2.11.0")
    graph = resolution(
        dist("torch", "2.11.0"),
        dist("torchvision", "0.26.0", "torch"),
        dist("torchaudio", "2.11.0", "torch"),
        dist("xformers", "0.0.31", "torch"),
        dist("some-node-dep", "1.0", "xformers"),
    )
    requires = {
        "torchvision": ("torch==2.11.0",),
        "xformers": ("numpy", "torch==2.7.1", 'torch==2.6.0; python_version < "3.9"'),
    }
    with pytest.raises(MixedFamily) as info:
        check_resolution(family, graph, requires)
    message = str(info.value)
    assert "xformers 0.0.31 requires torch==2.7.1 (its Requires-Dist)" in message
    assert "the target's torch is 2.11.0; required by some-node-dep" in message
    assert "torch_extra" in message
    # a range, or a pin whose marker does not hold for the target, is no pin of another torch
    check_resolution(
        family, graph, {"xformers": ("torch>=2.0", 'torch==2.6.0; python_version < "3.9"')}
    )


def test_requires_from_report() -> None:
    report = {
        "install": [
            {"metadata": {"name": "Torchvision", "requires_dist": ["torch==2.13.0"]}},
            {"metadata": {"name": "numpy"}},
        ]
    }
    assert requires_from_report(report) == {"torchvision": ("torch==2.13.0",), "numpy": ()}


# --- notes -----------------------------------------------------------------------------------


def test_no_torchaudio_names_comfyuis_audio_nodes(matrix: Matrix) -> None:
    target = cpu()
    family = family_for(target, matrix)
    layers = [Layer("torch", (dist("torch", "2.13.0+cpu"), dist("torchvision", "0.28.0+cpu")))]
    notes = family_notes(target, family, layers)
    assert len(notes) == 1
    assert "cpu: no torchaudio (no torchaudio exists for torch 2.13.0" in notes[0]
    assert "comfy_extras/nodes_audio.py" in notes[0] and "will not load" in notes[0]
    assert all(node in notes[0] for node in TORCHAUDIO_NODES)


def test_a_cpu_target_with_a_cuda_torch_is_named_with_its_size(tmp_path: Path) -> None:
    target = cpu(torch="2.11.0")
    family = TorchFamily("cpu", "2.11.0", "0.26.0", "2.11.0")
    cuda = [
        dist("nvidia-cublas", "13.0.0", url="file:///w/nvidia_cublas.whl"),
        dist("cuda-bindings", "13.0.1", url="https://pypi/cuda_bindings.whl"),
    ]
    layers = [
        Layer(
            "torch",
            (
                dist("torch", "2.11.0", "nvidia-cublas", "cuda-bindings"),
                dist("torchaudio", "2.11.0"),
                dist("torchvision", "0.26.0"),
                *cuda,
            ),
        )
    ]
    sizes = {"nvidia-cublas": 500_000_000, "cuda-bindings": 12_000_000}
    notes = family_notes(target, family, layers, sizes)
    assert len(notes) == 1, notes
    assert "cpu: a cpu target gets a CUDA build of torch (torch==2.11.0" in notes[0]
    assert "2 nvidia/cuda wheels, 512 MB" in notes[0]
    assert "https://download.pytorch.org/whl/cpu" in notes[0]
    unknown = family_notes(target, family, layers)
    assert "2 nvidia/cuda distributions (sizes not known)" in unknown[0]
    # the same family with +cpu wheels: no note
    plain = [Layer("torch", tuple(dist(n, v + "+cpu") for n, v in family_pins_of(family)))]
    assert family_notes(target, family, plain) == []


def family_pins_of(family: TorchFamily) -> list[tuple[str, str]]:
    return [
        ("torch", family.torch),
        ("torchvision", family.torchvision or ""),
        ("torchaudio", family.torchaudio or ""),
    ]


def test_comfyuis_family_lines_are_set_aside_and_checked() -> None:
    kept, dropped = split_family_lines(["torch", "torchsde", "torchvision", "TorchAudio>=2", "av"])
    assert kept == ["torchsde", "av"] and dropped == ["torch", "torchvision", "TorchAudio>=2"]
    family = TorchFamily("cpu", "2.13.0", "0.28.0", None)
    pins = family_pins(family, [Layer("torch", (dist("torch", "2.13.0+cpu"),))])
    assert pins == {"torch": "2.13.0+cpu"}
    assert dropped_line_notes(family, ["torch>=2.14"], pins) == [
        "cpu: ComfyUI's requirements ask for torch>=2.14; the target's family has torch 2.13.0+cpu"
    ]
    assert dropped_line_notes(family, ["torch>=2.1", "torchaudio"], pins) == []


# --- a real plan -----------------------------------------------------------------------------


def make_repo(path: Path, files: dict[str, str]) -> str:
    src = path.with_name(path.name + "-src")
    src.mkdir(parents=True)
    for name, text in files.items():
        (src / name).write_text(text)
    return gitserver.make_repo(src, path)[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    wheels = root / "wheels"
    make_wheel(wheels, "torch", "2.13.0+cpu")
    make_wheel(wheels, "torchvision", "0.28.0", ("torch==2.13.0",))  # PyPI's: no +cpu label
    make_wheel(wheels, "spandrel", "0.4.1", ("torch", "torchvision"))
    make_wheel(wheels, "torch", "2.11.0", ("nvidia-cublas",))
    make_wheel(wheels, "nvidia-cublas", "13.0.0")
    make_wheel(wheels, "torchvision", "0.26.0", ("torch==2.11.0",))
    make_wheel(wheels, "torchaudio", "2.11.0")
    comfy = make_repo(
        root / "comfyui", {"requirements.txt": "torch\ntorchvision\ntorchaudio\nspandrel\n"}
    )
    manager = make_repo(root / "manager", {"requirements.txt": "# none\n"})
    templates = root / "templates"
    tpl = templates / "tiny"
    (tpl / "workflows").mkdir(parents=True)
    (tpl / "template.yml").write_text("description: tiny\ngpu_targets: all\n")
    (tpl / "models_manifest.txt").write_text("")
    (tpl / "nodes_manifest.txt").write_text("")
    (tpl / "workflows" / "w.json").write_text(json.dumps({"nodes": [], "links": []}))
    return {
        "root": root,
        "wheels": wheels,
        "templates": templates,
        "comfyui": {"repo": f"file://{root / 'comfyui'}", "ref": comfy},
        "manager": {"repo": f"file://{root / 'manager'}", "ref": manager},
    }


def make(world, tmp_path: Path, gpu_targets: dict[str, Any], **extra: Any):
    config = load_config(
        {
            "registry": "127.0.0.1:5999/t",
            "gpu_targets": gpu_targets,
            "comfyui": world["comfyui"],
            "manager": world["manager"],
            **extra,
        }
    )
    settings = Settings(
        repo_root=REPO,
        build_dir=tmp_path / "build",
        os_base_ref="127.0.0.1:5999/t/os-base@sha256:" + "a" * 64,
        cache_dir=world["root"] / "cache",
        resolve_options=ResolveOptions(no_index=True, find_links=(str(world["wheels"]),)),
    )
    tpl = load_template(world["templates"], "tiny")
    return make_plan(config, [tpl], settings, lambda ref: None), settings


def test_plan_refuses_a_cpu_torch_with_the_cuda_torchvision_spandrel_pulled(world, tmp_path):
    # the failure seen with the real ComfyUI: torch alone was pinned, spandrel pulled PyPI's
    with pytest.raises(MixedFamily) as info:
        make(world, tmp_path, {"cpu": {"cuda": "cpu", "torch": "2.13.0"}})
    assert "torchvision 0.28.0 (no local label" in str(info.value)
    assert "spandrel" in str(info.value)


def test_plan_shows_notes_driver_floor_and_the_family(world, tmp_path):
    # the cpu target on PyPI's CUDA build of the 2.11 family (tests/upstream/pypi-cu130.yml)
    plan, settings = make(
        world,
        tmp_path,
        {
            "cpu": {"cuda": "cpu", "torch": "2.11.0"},
            "rtx5090": {"cuda": "13.0", "torch": "2.11.0", "torch_cuda_arch_list": "12.0"},
        },
    )
    nodes = {n["name"]: n for n in plan_json(plan, settings)["nodes"]}
    assert nodes["base-rtx5090"]["driver_floor"] == "580.65.06"
    assert nodes["base-cpu"]["driver_floor"] is None
    family = {"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0"}
    assert nodes["base-cpu"]["torch_family"] == family
    assert nodes["base-rtx5090"]["torch_family"] == family
    notes = plan_json(plan, settings)["notes"]
    assert any(
        n.startswith("ComfyUI's requirements list torch, torchvision, torchaudio") for n in notes
    )
    cuda_note = [n for n in notes if "a cpu target gets a CUDA build" in n]
    assert len(cuda_note) == 1 and "1 nvidia/cuda wheel, " in cuda_note[0], notes
    assert "NOTE: cpu: a cpu target gets a CUDA build" in plan_table(plan)
    constraints = (tmp_path / "build" / "base-cpu" / "constraints.txt").read_text()
    for pin in ("torch==2.11.0", "torchvision==0.26.0", "torchaudio==2.11.0", "spandrel==0.4.1"):
        assert f"{pin}\n" in constraints


def test_plan_without_torchaudio_names_the_audio_nodes(world, tmp_path):
    plan, _ = make(
        world,
        tmp_path,
        {"cpu": {"cuda": "cpu", "torch": "2.11.0", "torchaudio": "none"}},
    )
    audio = [n for n in plan.notes if "no torchaudio" in n]
    assert len(audio) == 1 and "comfy_extras/nodes_audio.py" in audio[0]


def test_plan_refuses_excluding_a_family_member(world, tmp_path):
    with pytest.raises(Exception, match=r"package_layers_exclude names torchvision"):
        make(
            world,
            tmp_path,
            {"cpu": {"cuda": "cpu", "torch": "2.11.0"}},
            package_layers_exclude=["torchvision"],
        )


def test_plan_uses_the_inventorys_matrix_extra(world, tmp_path):
    extra = {
        "gpus": {"rtx6000": "12.0"},
        "rows": [
            {
                "cuda": "13.0",
                "torch": "2.11.0",
                "index": "local",
                "arch_list": "12.0",
                "ptx": None,
                "min_driver": "580.95.05",
            }
        ],
    }
    plan, settings = make(
        world,
        tmp_path,
        {"rtx6000": {"cuda": "13.0", "torch": "2.11.0", "torch_cuda_arch_list": "12.0"}},
        cuda_torch_matrix_extra=extra,
    )
    nodes = {n["name"]: n for n in plan_json(plan, settings)["nodes"]}
    assert nodes["base-rtx6000"]["driver_floor"] == "580.95.05"
