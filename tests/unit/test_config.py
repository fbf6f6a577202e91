"""module_utils/config.py: the configuration model and its error messages."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ansible.module_utils.config import (
    DEFAULT_REGISTRY,
    TOP_LEVEL_KEYS,
    Config,
    ConfigError,
    GitSource,
    OsBase,
    check_arch_list_syntax,
    load_config,
)


def base_vars() -> dict[str, Any]:
    return {
        "gpu_targets": {
            "rtx5090": {
                "cuda": "12.8",
                "torch": "2.7.1",
                "torch_index_url": "https://download.pytorch.org/whl/cu128",
                "torch_cuda_arch_list": "12.0",
                "extra_libs": ["libgl1"],
            },
            "cpu": {"cuda": "cpu", "torch": "2.13.0", "torch_wheelhouse": "/opt/wheels"},
        },
        "package_layers": [
            {"name": "essentials", "specs": ["numpy<3", "pillow"]},
            {"name": "extended", "specs": ["opencv-python-headless"]},
        ],
        "comfyui": {"repo": "https://github.com/comfyanonymous/ComfyUI.git", "ref": "v0.3.40"},
        "manager": {"repo": "https://github.com/Comfy-Org/ComfyUI-Manager.git", "ref": "3.38"},
    }


def error_for(variables: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(variables)
    return info.value


def test_minimal_config_gets_defaults() -> None:
    config = load_config(base_vars())
    assert isinstance(config, Config)
    assert config.registry == DEFAULT_REGISTRY
    assert config.os_base == OsBase(source="image", image="ubuntu:22.04")
    assert config.comfyui == GitSource("https://github.com/comfyanonymous/ComfyUI.git", "v0.3.40")
    assert config.manager.security_level == "normal"
    assert [t.name for t in config.gpu_targets] == ["rtx5090", "cpu"]
    assert [layer.name for layer in config.package_layers] == ["essentials", "extended"]
    assert config.package_layers[0].specs == ("numpy<3", "pillow")
    assert config.package_layers_exclude == ()
    assert config.replace_map == {}


def test_target_fields() -> None:
    config = load_config(base_vars())
    gpu = config.target("rtx5090")
    assert gpu.gpu == "rtx5090"  # defaults to the target name
    assert gpu.cuda == "12.8" and gpu.torch == "2.7.1"
    assert gpu.torch_index_url == "https://download.pytorch.org/whl/cu128"
    assert gpu.torch_wheelhouse is None
    assert gpu.torch_cuda_arch_list == "12.0"
    assert gpu.extra_libs == ("libgl1",)
    assert gpu.base_image is None
    assert not gpu.is_cpu
    cpu = config.target("cpu")
    assert cpu.is_cpu and cpu.torch_cuda_arch_list == "" and cpu.torch_wheelhouse == "/opt/wheels"


def test_config_is_frozen() -> None:
    config = load_config(base_vars())
    with pytest.raises(AttributeError):
        config.registry = "elsewhere"  # type: ignore[misc]
    hash(config)  # hashable all the way down


def test_unknown_target_lookup_names_the_defined_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(base_vars()).target("h100")
    err = info.value
    assert err.where == "gpu_targets.h100"
    assert "rtx5090, cpu" in err.what and "gpu_targets" in err.fix


def test_debootstrap_os_base() -> None:
    variables = base_vars()
    variables["os_base"] = {
        "source": "debootstrap",
        "suite": "bookworm",
        "mirror": "http://deb.debian.org/debian",
        "snapshot": "20250101T000000Z",
    }
    os_base = load_config(variables).os_base
    assert os_base.source == "debootstrap" and os_base.suite == "bookworm"
    assert os_base.snapshot == "20250101T000000Z" and os_base.image is None


def test_replace_and_exclude_are_canonicalised() -> None:
    variables = base_vars()
    variables["package_layers_exclude"] = ["OpenCV_Python"]
    variables["package_layers_replace"] = {"opencv-contrib-python": "opencv-python-headless"}
    config = load_config(variables)
    assert config.package_layers_exclude == ("opencv-python",)
    assert config.replace_map == {"opencv-contrib-python": "opencv-python-headless"}


@pytest.mark.parametrize(
    ("mutate", "where", "what", "fix"),
    [
        (lambda v: v.update(regsitry="x"), "regsitry", "unknown key", "use only registry"),
        (
            lambda v: v["gpu_targets"]["rtx5090"].update(cuda_version="12.8"),
            "gpu_targets.rtx5090.cuda_version",
            "unknown key",
            "torch_cuda_arch_list",
        ),
        (lambda v: v.pop("comfyui"), "comfyui", "required", "set comfyui"),
        (
            lambda v: v["gpu_targets"]["rtx5090"].update(cuda=12.8),
            "gpu_targets.rtx5090.cuda",
            "number",
            "quote it",
        ),
        (
            lambda v: v["gpu_targets"]["rtx5090"].update(cuda="twelve"),
            "gpu_targets.rtx5090.cuda",
            "not a CUDA version",
            "'12.8'",
        ),
        (
            lambda v: v["gpu_targets"]["rtx5090"].update(torch="latest"),
            "gpu_targets.rtx5090.torch",
            "not a torch version",
            "'2.7.1'",
        ),
        (
            lambda v: v["gpu_targets"]["rtx5090"].update(torch_cuda_arch_list="8.9, 12.0"),
            "gpu_targets.rtx5090.torch_cuda_arch_list",
            "not X.Y",
            "semicolons",
        ),
        (
            lambda v: v["gpu_targets"]["rtx5090"].pop("torch_cuda_arch_list"),
            "gpu_targets.rtx5090.torch_cuda_arch_list",
            "required on a CUDA target",
            "'12.0'",
        ),
        (
            lambda v: v["gpu_targets"]["cpu"].update(torch_cuda_arch_list="8.9"),
            "gpu_targets.cpu.torch_cuda_arch_list",
            "cpu target",
            "remove",
        ),
        (
            lambda v: v["gpu_targets"]["rtx5090"].update(torch_wheelhouse="/opt/wheels"),
            "gpu_targets.rtx5090",
            "both torch_index_url and torch_wheelhouse",
            "keep one",
        ),
        (
            lambda v: v["gpu_targets"]["rtx5090"].update(torch_index_url="download.pytorch.org"),
            "gpu_targets.rtx5090.torch_index_url",
            "not a URL",
            "torch_wheelhouse",
        ),
        (
            lambda v: v["gpu_targets"]["cpu"].update(torch_wheelhouse="wheels"),
            "gpu_targets.cpu.torch_wheelhouse",
            "absolute",
            "/opt/wheels",
        ),
        (
            lambda v: v["gpu_targets"].update({"RTX 5090": {}}),
            "gpu_targets.RTX 5090",
            "not a valid name",
            "lower-case",
        ),
        (lambda v: v.update(gpu_targets={}), "gpu_targets", "empty", "at least one"),
        (
            lambda v: v["gpu_targets"]["rtx5090"].update(extra_libs="libgl1"),
            "gpu_targets.rtx5090.extra_libs",
            "list of strings",
            "[libgl1]",
        ),
        (
            lambda v: v.update(registry="https://r.example/ns"),
            "registry",
            "scheme",
            "without a scheme",
        ),
        (lambda v: v.update(registry="r.example/ns/"), "registry", "ends with", "host[:port]"),
        (
            lambda v: v.update(os_base={"source": "tarball"}),
            "os_base.source",
            "'image' or 'debootstrap'",
            "os_base.source: image",
        ),
        (
            lambda v: v.update(os_base={"source": "image"}),
            "os_base.image",
            "required",
            "set os_base.image",
        ),
        (
            lambda v: v.update(
                os_base={"source": "debootstrap", "suite": "bookworm", "mirror": "x"}
            ),
            "os_base.mirror",
            "not an http",
            "deb.debian.org",
        ),
        (
            lambda v: v.update(os_base={"source": "image", "image": "u", "suite": "b"}),
            "os_base.suite",
            "unknown key",
            "source, image",
        ),
        (
            lambda v: v.update(package_layers={"essentials": ["numpy"]}),
            "package_layers",
            "list of layers",
            "- name:",
        ),
        (
            lambda v: v["package_layers"].append({"name": "essentials", "specs": ["rich"]}),
            "package_layers[2].name",
            "already package_layers[0]",
            "unique",
        ),
        (
            lambda v: v["package_layers"][1]["specs"].append("numpy>=2"),
            "package_layers[1].specs[1]",
            "already requested by package_layers[0].specs[0]",
            "one layer only",
        ),
        (
            lambda v: v["package_layers"][0]["specs"].append("numpy >>= 2"),
            "package_layers[0].specs[2]",
            "not a pip requirement",
            "numpy>=1.26",
        ),
        (
            lambda v: v["package_layers"][0].update(specs=[]),
            "package_layers[0].specs",
            "empty",
            "at least one",
        ),
        (
            lambda v: v.update(package_layers_exclude=["opencv python"]),
            "package_layers_exclude[0]",
            "not a distribution name",
            "opencv-python",
        ),
        (
            lambda v: v.update(package_layers_replace={"a": "a"}),
            "package_layers_replace.a",
            "itself",
            "remove",
        ),
        (
            lambda v: v.update(package_layers_exclude=["a"], package_layers_replace={"a": "b"}),
            "package_layers_replace.a",
            "also in package_layers_exclude",
            "keep it in one",
        ),
        (
            lambda v: v.update(package_layers_replace={"a": "b", "b": "c"}),
            "package_layers_replace.a",
            "itself replaced",
            "final distribution",
        ),
        (
            lambda v: v["comfyui"].update(repo="github.com/x/y"),
            "comfyui.repo",
            "not a git URL",
            "https://",
        ),
        (
            lambda v: v["manager"].update(security_level="weak"),
            "manager.security_level",
            "not allowed",
            "strong, normal",
        ),
        (
            lambda v: v["manager"].update(ref="  3.38"),
            "manager.ref",
            "whitespace",
            "remove the spaces",
        ),
        (lambda v: v.update(comfyui="https://x"), "comfyui", "mapping", "key: value"),
    ],
)
def test_errors_name_where_what_and_fix(mutate: Any, where: str, what: str, fix: str) -> None:
    variables = copy.deepcopy(base_vars())
    mutate(variables)
    err = error_for(variables)
    assert err.where == where
    assert what in err.what
    assert fix in err.fix
    assert str(err) == f"{err.where}: {err.what}. Fix: {err.fix}"


def test_unknown_top_level_key_lists_every_allowed_key() -> None:
    variables = base_vars()
    variables["gpus"] = {}
    err = error_for(variables)
    for key in TOP_LEVEL_KEYS:
        assert key in err.fix


def test_arch_list_syntax() -> None:
    assert check_arch_list_syntax("8.9;12.0;10.0+PTX", "x") == "8.9;12.0;10.0+PTX"
    assert check_arch_list_syntax("9.0a", "x") == "9.0a"
    with pytest.raises(ConfigError, match="repeats"):
        check_arch_list_syntax("8.9;8.9", "x")
    with pytest.raises(ConfigError, match=r"x: entry '8\.9 ' "):
        check_arch_list_syntax("8.9 ;9.0", "x")


def test_follow_is_optional_and_must_be_a_string() -> None:
    data = base_vars()
    data["comfyui"]["follow"] = "v*"
    data["manager"]["follow"] = "main"
    config = load_config(data)
    assert (config.comfyui.follow, config.manager.follow) == ("v*", "main")
    assert config.comfyui.ref == "v0.3.40"  # the plan builds the pin; nightly.yml moves it
    data["comfyui"]["follow"] = 3.1
    err = error_for(data)
    assert "comfyui.follow" in str(err) and "quote it" in str(err)


# --- the torch family keys and the matrix extras ---------------------------------------------


def test_family_fields_default_to_the_matrix_and_none_leaves_out() -> None:
    gpu = load_config(base_vars()).target("rtx5090")
    assert (gpu.torchvision, gpu.torchaudio, gpu.torch_extra) == (None, None, ())
    variables = base_vars()
    variables["gpu_targets"]["rtx5090"].update(
        torchvision="0.22.1", torchaudio="none", torch_extra=["xformers==0.0.31"]
    )
    gpu = load_config(variables).target("rtx5090")
    assert (gpu.torchvision, gpu.torchaudio) == ("0.22.1", "none")
    assert gpu.torch_extra == ("xformers==0.0.31",)


@pytest.mark.parametrize(
    ("mutate", "where", "what"),
    [
        (
            lambda t: t.update(torchvision="0.22.1+cu128"),
            "gpu_targets.rtx5090.torchvision",
            "not a release version",
        ),
        (lambda t: t.update(torch_extra="xformers"), "gpu_targets.rtx5090.torch_extra", "list"),
        (
            lambda t: t.update(torch_extra=["xformers"]),
            "gpu_targets.rtx5090.torch_extra[0]",
            "does not pin a version",
        ),
        (
            lambda t: t.update(torch_extra=["torchvision==0.22.1"]),
            "gpu_targets.rtx5090.torch_extra[0]",
            "own torchvision key",
        ),
        (
            lambda t: t.update(torch_extra=["triton==3.3.1", "Triton==3.3.1"]),
            "gpu_targets.rtx5090.torch_extra[1]",
            "repeats",
        ),
        (
            lambda t: t.update(torch_extra=["x y"]),
            "gpu_targets.rtx5090.torch_extra[0]",
            "not a pip requirement",
        ),
    ],
)
def test_family_field_errors(mutate: Any, where: str, what: str) -> None:
    variables = base_vars()
    mutate(variables["gpu_targets"]["rtx5090"])
    err = error_for(variables)
    assert err.where == where and what in err.what, str(err)


def test_matrix_extra_and_file_keys() -> None:
    config = load_config(base_vars())
    assert config.cuda_torch_matrix_extra is None and config.cuda_torch_matrix_file is None
    variables = base_vars()
    extra = {"gpus": {"rtx6000": "12.0"}, "rows": [], "families": []}
    variables.update(cuda_torch_matrix_extra=extra, cuda_torch_matrix_file="/srv/m.yml")
    config = load_config(variables)
    assert config.cuda_torch_matrix_extra == extra
    assert config.cuda_torch_matrix_file == "/srv/m.yml"
    # what playbooks/plan.yml passes when the inventory sets neither
    variables.update(cuda_torch_matrix_extra={}, cuda_torch_matrix_file="")
    config = load_config(variables)
    assert config.cuda_torch_matrix_extra is None and config.cuda_torch_matrix_file is None
    variables["cuda_torch_matrix_extra"] = {"row": []}
    err = error_for(variables)
    assert err.where == "cuda_torch_matrix_extra.row" and "gpus, rows, families" in err.fix
    variables["cuda_torch_matrix_extra"] = ["rows"]
    assert error_for(variables).where == "cuda_torch_matrix_extra"


def test_the_embedded_default_is_one_family_per_target() -> None:
    """inventory/local's gpu_targets: CUDA 13.0 + the 2.11 family from PyPI, a cu128 variant,
    and the cpu target on the +cpu family; every target passes the matrix and its families."""
    from pathlib import Path

    import yaml
    from ansible.module_utils.gpu_matrix import load_matrix_file, validate_target
    from ansible.module_utils.torch_family import family_for

    repo = Path(__file__).resolve().parents[2]
    images = yaml.safe_load(
        (repo / "inventory" / "local" / "group_vars" / "all" / "images.yml").read_text()
    )
    config = load_config({k: v for k, v in images.items() if k in TOP_LEVEL_KEYS})
    matrix = load_matrix_file(repo / "playbooks" / "vars" / "cuda_torch_matrix.yml")
    by_name = {t.name: t for t in config.gpu_targets}
    for name in ("rtx4090", "rtx5090", "h100"):
        gpu = by_name[name]
        assert (gpu.cuda, gpu.torch, gpu.torch_index_url) == ("13.0", "2.11.0", None), name
        assert matrix.row("13.0", "2.11.0").index == "https://pypi.org/simple"
    assert by_name["cpu"].torch_index_url == "https://download.pytorch.org/whl/cpu"
    assert by_name["rtx4090-cu128"].gpu == "rtx4090"
    assert by_name["rtx4090-cu128"].cuda == "12.8"
    for gpu in config.gpu_targets:
        validate_target(gpu, matrix)
        family = family_for(gpu, matrix)
        assert family.specs() == ["torch==2.11.0", "torchvision==0.26.0", "torchaudio==2.11.0"]


# --- manager.mode ------------------------------------------------------------------------------


def test_manager_mode_defaults_to_auto_and_package_needs_no_git_pin() -> None:
    assert load_config(base_vars()).manager.mode == "auto"
    data = base_vars()
    data["manager"] = {"security_level": "strong"}  # auto: ComfyUI's manager_requirements.txt
    manager = load_config(data).manager
    assert (manager.mode, manager.repo, manager.ref, manager.security_level) == (
        "auto",
        "",
        "",
        "strong",
    )
    data["manager"] = {"mode": "package"}
    assert load_config(data).manager.mode == "package"
    data["manager"] = {**base_vars()["manager"], "mode": "git"}
    assert load_config(data).manager.ref == "3.38"


@pytest.mark.parametrize(
    ("manager", "where", "what", "fix"),
    [
        ({"mode": "pip"}, "manager.mode", "'pip' is not a mode", "auto, package, git"),
        ({"mode": "git"}, "manager.repo", "required with manager.mode: git", "set manager.repo"),
        ({"mode": "git", "repo": "https://x/y"}, "manager.ref", "required", "set manager.ref"),
        ({"repo": "https://x/y"}, "manager.ref", "a git pin needs both", "leave out"),
        ({"follow": "main"}, "manager.repo", "a git pin needs both", "manager_requirements"),
        ({"mode": "package", "ref": "3.38"}, "manager.ref", "not used", "manager.mode: auto"),
        ({"mode": "package", "follow": "main"}, "manager.follow", "not used", "remove"),
    ],
)
def test_manager_mode_errors_name_the_key(manager, where: str, what: str, fix: str) -> None:
    data = base_vars()
    data["manager"] = manager
    err = error_for(data)
    assert err.where == where
    assert what in err.what
    assert fix in err.fix
