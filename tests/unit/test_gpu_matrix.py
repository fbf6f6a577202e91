"""module_utils/gpu_matrix.py: the arch rule, the matrix file, and target validation."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from ansible.module_utils.config import GpuTarget
from ansible.module_utils.gpu_matrix import (
    MATRIX_VAR,
    Arch,
    Family,
    IncompatibleTarget,
    Matrix,
    MatrixError,
    arch_serves,
    config_matrix,
    load_matrix,
    load_matrix_file,
    matrix_path,
    minimum_for,
    parse_arch_list,
    parse_capability,
    serves,
    target_capability,
    validate_target,
)

MATRIX_FILE = Path(__file__).resolve().parents[2] / "playbooks" / "vars" / "cuda_torch_matrix.yml"
TORCH_215_ARCHES = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return load_matrix_file(MATRIX_FILE)


def raw_matrix() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(MATRIX_FILE.read_text())[MATRIX_VAR])


def target(name: str = "rtx5090", **fields: Any) -> GpuTarget:
    values: dict[str, Any] = {
        "name": name,
        "gpu": name,
        "cuda": "12.8",
        "torch": "2.7.1",
        "torch_index_url": "https://download.pytorch.org/whl/cu128",
        "torch_wheelhouse": None,
        "torch_cuda_arch_list": "12.0",
    }
    values.update(fields)
    return GpuTarget(**values)


# --- the arch rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch_list", "capability", "expected"),
    [
        ("8.6", "8.9", True),  # same major, lower minor: sm_86 runs on the 4090
        ("8.9", "8.6", False),  # higher minor does not run on a lower one
        ("9.0", "8.9", False),  # other major, no PTX
        ("8.0;9.0", "10.0", False),
        ("8.0;9.0+PTX", "10.0", True),  # PTX of a lower arch JIT-compiles
        ("8.0;9.0+PTX", "12.0", True),
        ("10.0+PTX", "9.0", False),  # PTX of a higher arch never runs
        ("7.5;8.0;8.6;9.0;10.0;12.0", "12.0", True),
        ("7.5;8.0;8.6;9.0", "12.0", False),  # the cu126 wheels on a 5090
        ("9.0a", "9.0", True),
        ("9.0a", "9.1", False),  # arch-specific code runs only on exactly that arch
        ("", "8.9", False),
        (TORCH_215_ARCHES, "8.9", True),  # torch.cuda.get_arch_list() spelling
        (TORCH_215_ARCHES, "12.0", True),
        (TORCH_215_ARCHES, "7.0", False),
        (["sm_80", "compute_90"], "10.0", True),
        (["sm_80", "compute_90"], "8.9", True),
        (["sm_80", "sm_90"], "12.0", False),
        ([], "8.9", False),
        ("sm_75 sm_86", "sm_89", True),  # spaces and the sm_ form of the capability
    ],
)
def test_serves(arch_list: Any, capability: str, expected: bool) -> None:
    assert serves(arch_list, capability) is expected


def test_serves_without_ptx() -> None:
    assert serves("10.0+PTX", "12.0")
    assert not serves("10.0+PTX", "12.0", allow_ptx=False)
    assert serves("12.0+PTX", "12.0", allow_ptx=False)


def test_parse_arch_list_both_forms_agree() -> None:
    dotted = parse_arch_list("7.5;8.6;9.0+PTX")
    torch_style = parse_arch_list(["sm_75", "sm_86", "sm_90", "compute_90"])
    assert dotted == torch_style
    assert Arch(9, 0, "ptx") in dotted
    assert parse_arch_list(["sm_120"]) == (Arch(12, 0),)
    assert parse_arch_list("sm_100f") == (Arch(10, 0, "sass", "f"),)
    assert Arch(12, 0).sm == "sm_120"


@pytest.mark.parametrize("bad", ["8", "sm_x", "8.9+ptx", "compute"])
def test_parse_arch_list_refuses_garbage_with_the_fix(bad: str) -> None:
    with pytest.raises(ValueError, match=r"write e\.g\. '8\.6;9\.0\+PTX'"):
        parse_arch_list(bad)


def test_parse_capability() -> None:
    assert parse_capability("12.0") == (12, 0)
    assert parse_capability("sm_89") == (8, 9)
    with pytest.raises(ValueError, match=r"write it as X\.Y"):
        parse_capability("compute_90")
    with pytest.raises(ValueError, match=r"write it as X\.Y"):
        parse_capability("twelve")


def test_arch_serves_single_entries() -> None:
    assert arch_serves(Arch(8, 6), 8, 9)
    assert not arch_serves(Arch(9, 0, "ptx"), 8, 9)
    assert not arch_serves(Arch(8, 0, "ptx"), 8, 9, allow_ptx=False)


# --- the data file ---------------------------------------------------------------------------


def test_matrix_file_has_the_known_gpus(matrix: Matrix) -> None:
    assert dict(matrix.gpus) == {
        "rtx3090": "8.6",
        "a100": "8.0",
        "rtx4090": "8.9",
        "l40s": "8.9",
        "h100": "9.0",
        "b200": "10.0",
        "rtx5090": "12.0",
    }


def test_matrix_rows_follow_the_known_facts(matrix: Matrix) -> None:
    for row in matrix.rows:
        if row.cuda == "cpu":
            assert row.arch_list == "" and row.min_driver is None
            continue
        # download.pytorch.org, PyPI's default build (13.0 + 2.11.0) or a local wheelhouse
        assert row.index in (
            f"https://download.pytorch.org/whl/{row.tag}",
            "https://pypi.org/simple",
            "local",
        ), row
        if row.index == "https://pypi.org/simple":
            assert (row.cuda, row.torch) == ("13.0", "2.11.0"), row
        blackwell = serves(row.served_arches, "12.0")
        # cu118..cu126 stop at sm_90 with no PTX; cu128 and newer hold 12.0.
        assert blackwell is (row.tag in ("cu128", "cu129", "cu130", "cu132")), row
        if blackwell:
            assert tuple(int(p) for p in row.torch.split(".")[:2]) >= (2, 7), row
    row = matrix.row("13.2", "2.15.0")
    assert row is not None and serves(row.arch_list, "12.0")
    assert parse_arch_list(row.arch_list) == parse_arch_list(TORCH_215_ARCHES)
    assert matrix.row("cpu", "2.15.0") is not None
    assert matrix.row("cpu", "2.11.0") is not None
    for torch in ("2.9.0", "2.9.1", "2.10.0", "2.11.0"):
        row = matrix.row("12.8", torch)
        assert row is not None and row.index.endswith("/cu128"), torch
    # driver floors: the toolkit's own for 12.8 (also the Blackwell floor) and 13.0
    assert {r.min_driver for r in matrix.rows_for("12.8")} == {"570.26"}
    assert {r.min_driver for r in matrix.rows_for("13.0")} == {"580.65.06"}
    assert matrix.row("13.0", "2.14.1").index == "local"
    assert {r.tag for r in matrix.rows} >= {"cu118", "cu121", "cu124", "cu126", "cu128", "cpu"}


def test_minimum_for_is_computed_from_the_rows(matrix: Matrix) -> None:
    lowest = minimum_for("12.0", matrix)
    assert lowest is not None
    assert (lowest[0].cuda, lowest[1].torch) == ("12.8", "2.7.0")
    lowest = minimum_for("8.9", matrix)
    assert lowest is not None and lowest[0].cuda == "11.8"
    assert minimum_for("13.0", matrix) is None


def test_minimum_moves_when_the_data_moves() -> None:
    data = raw_matrix()
    data["rows"] = [r for r in data["rows"] if r["cuda"] not in ("12.8", "12.9")]
    matrix = load_matrix(data)
    with pytest.raises(IncompatibleTarget) as info:
        validate_target(target(cuda="12.4", torch="2.5.1", torch_cuda_arch_list="12.0"), matrix)
    assert "sm_120 needs CUDA >= 13.0 and torch >= 2.9 (cu130 or newer)" in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "where", "fix"),
    [
        (lambda d: d.pop("gpus"), "cuda_torch_matrix", "give the keys gpus and rows"),
        (lambda d: d.update(extra=[]), "cuda_torch_matrix", "only the keys gpus, rows, families"),
        (
            lambda d: d["families"][0].pop("torchaudio"),
            "cuda_torch_matrix.families[0]",
            "torchaudio: null",
        ),
        (
            lambda d: d["families"][0].update(torchvision=0.16),
            "cuda_torch_matrix.families[0].torchvision",
            "'0.26.0'",
        ),
        (
            lambda d: d["families"][0].update(torchvision="0.16.2+cpu"),
            "cuda_torch_matrix.families[0].torchvision",
            "'0.16.2'",
        ),
        (
            lambda d: d["families"].append(dict(d["families"][0])),
            "cuda_torch_matrix.families[",
            "one pair per torch",
        ),
        (lambda d: d["gpus"].update(x=8.9), "cuda_torch_matrix.gpus.x", "'8.9'"),
        (lambda d: d["gpus"].update(x="89"), "cuda_torch_matrix.gpus.x", "X.Y"),
        (lambda d: d.update(rows=[]), "cuda_torch_matrix.rows", "one row per pair"),
        (lambda d: d["rows"][0].pop("ptx"), "cuda_torch_matrix.rows[0]", "min_driver"),
        (lambda d: d["rows"][0].update(torch=2.1), "cuda_torch_matrix.rows[0].torch", "'2.7.1'"),
        (lambda d: d["rows"][0].update(cuda="x"), "cuda_torch_matrix.rows[0]", "'12.8'"),
        (lambda d: d["rows"][0].update(arch_list="8,0;x"), "cuda_torch_matrix.rows[0]", "';'"),
        (lambda d: d["rows"][0].update(arch_list=""), "cuda_torch_matrix.rows[0]", "arch"),
        (lambda d: d["rows"][-1].update(ptx="9.0"), "cuda_torch_matrix.rows[", "empty/null"),
        (lambda d: d["rows"].append(d["rows"][0]), "cuda_torch_matrix.rows[", "keep one row"),
        (
            lambda d: d["rows"][0].update(min_driver=525),
            "cuda_torch_matrix.rows[0].min_driver",
            "'570.26'",
        ),
    ],
)
def test_matrix_errors_name_where_and_fix(mutate: Any, where: str, fix: str) -> None:
    data = raw_matrix()
    mutate(data)
    with pytest.raises(MatrixError) as info:
        load_matrix(data)
    assert info.value.where.startswith(where)
    assert fix in info.value.fix


def test_matrix_file_without_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "m.yml"
    path.write_text("other: 1\n")
    with pytest.raises(MatrixError) as info:
        load_matrix_file(path)
    assert info.value.where == str(path) and MATRIX_VAR in info.value.fix


def test_matrix_file_errors_name_the_file(tmp_path: Path) -> None:
    data = raw_matrix()
    data["rows"][1]["arch_list"] = "8.0 9.0,x"
    path = tmp_path / "m.yml"
    path.write_text(yaml.safe_dump({MATRIX_VAR: data}))
    with pytest.raises(MatrixError) as info:
        load_matrix_file(path)
    assert info.value.where == f"{path}:{MATRIX_VAR}.rows[1]"


# --- validate_target -------------------------------------------------------------------------


def test_rtx5090_on_cuda_124_is_refused_with_the_minimum(matrix: Matrix) -> None:
    bad = target(
        cuda="12.4",
        torch="2.5.1",
        torch_index_url="https://download.pytorch.org/whl/cu124",
        torch_cuda_arch_list="12.0",
    )
    with pytest.raises(IncompatibleTarget) as info:
        validate_target(bad, matrix)
    message = str(info.value)
    assert message.startswith(
        "rtx5090: sm_120 needs CUDA >= 12.8 and torch >= 2.7 (cu128 or newer); "
        "gpu_targets.rtx5090 asks for CUDA 12.4 / torch 2.5.1"
    )
    assert "Fix: set cuda: '12.8' and torch: '2.7.0' in gpu_targets.rtx5090" in message


def test_rtx5090_with_the_b200_arch_list_is_refused(matrix: Matrix) -> None:
    with pytest.raises(IncompatibleTarget) as info:
        validate_target(target(torch_cuda_arch_list="10.0+PTX"), matrix)
    message = str(info.value)
    assert "gpu_targets.rtx5090.torch_cuda_arch_list is '10.0+PTX'" in message
    assert "no code for rtx5090 (12.0" in message
    assert "Fix: include '12.0'" in message


def test_unknown_torch_cuda_pair_lists_the_offered_versions(matrix: Matrix) -> None:
    with pytest.raises(IncompatibleTarget) as info:
        validate_target(target(torch="2.6.0"), matrix)
    message = str(info.value)
    assert "no cuda_torch_matrix row pairs CUDA 12.8 with torch 2.6.0" in message
    assert "rows for CUDA 12.8 have torch 2.7.0, 2.7.1, 2.8.0, 2.9.0" in message
    assert "gpu_targets.rtx5090 asks for CUDA 12.8 / torch 2.6.0" in message
    assert "Fix: pick a listed pair" in message


def test_unknown_cuda_version(matrix: Matrix) -> None:
    with pytest.raises(IncompatibleTarget, match=r"no row has CUDA 12\.3.*Fix: pick a listed pair"):
        validate_target(target("rtx4090", cuda="12.3", torch_cuda_arch_list="8.9"), matrix)


def test_unknown_gpu_names_the_known_ones(matrix: Matrix) -> None:
    with pytest.raises(IncompatibleTarget) as info:
        validate_target(target("a6000", torch_cuda_arch_list="8.6"), matrix)
    message = str(info.value)
    assert "unknown GPU 'a6000' (gpu_targets.a6000.gpu)" in message
    assert "rtx4090" in message and "Fix: set gpu_targets.a6000.gpu" in message


def test_gpu_key_maps_a_target_name_to_a_card(matrix: Matrix) -> None:
    validate_target(target("fast", gpu="h100", torch_cuda_arch_list="9.0"), matrix)
    assert target_capability(target("fast", gpu="h100"), matrix) == "9.0"


def test_arch_without_any_serving_row(matrix: Matrix) -> None:
    data = raw_matrix()
    data["gpus"]["future"] = "13.0"
    with pytest.raises(IncompatibleTarget, match=r"no row .* serves sm_130.*Fix: add a row"):
        validate_target(target("future", torch_cuda_arch_list="12.0"), load_matrix(data))


def test_row_of_the_cuda_serves_but_not_this_torch() -> None:
    data = raw_matrix()
    data["rows"].append(
        {
            "cuda": "12.8",
            "torch": "2.6.9",
            "index": "https://download.pytorch.org/whl/cu128",
            "arch_list": "8.0;9.0",
            "ptx": None,
            "min_driver": "525.60.13",
        }
    )
    with pytest.raises(IncompatibleTarget, match=r"torch 2\.6\.9 .* Fix: pick a torch version"):
        validate_target(target(torch="2.6.9"), load_matrix(data))


def test_arch_list_newer_than_the_cuda_builds(matrix: Matrix) -> None:
    bad = target("rtx4090", cuda="12.4", torch="2.5.1", torch_cuda_arch_list="8.9;12.0")
    with pytest.raises(IncompatibleTarget, match=r"lists 12\.0, newer .*up to 9\.0.*Fix: drop"):
        validate_target(bad, matrix)


@pytest.mark.parametrize(
    ("name", "cuda", "torch", "arch_list"),
    [
        ("rtx4090", "12.4", "2.5.1", "8.9"),
        ("rtx4090", "12.1", "2.3.1", "8.6"),  # sm_86 code serves the 8.9 card
        ("rtx5090", "12.8", "2.7.1", "12.0"),
        ("rtx5090", "13.2", "2.15.0", "8.9;12.0"),
        ("h100", "12.6", "2.7.1", "9.0"),
        ("b200", "12.8", "2.8.0", "10.0"),
        ("a100", "11.8", "2.1.2", "8.0"),
        ("l40s", "13.0", "2.10.0", "8.9"),
        ("rtx3090", "12.9", "2.9.0", "8.6+PTX"),
    ],
)
def test_good_targets_pass(
    matrix: Matrix, name: str, cuda: str, torch: str, arch_list: str
) -> None:
    assert (
        validate_target(
            target(name, cuda=cuda, torch=torch, torch_cuda_arch_list=arch_list), matrix
        )
        is None
    )


def test_cpu_target(matrix: Matrix) -> None:
    cpu = target("cpu", cuda="cpu", torch="2.13.0", torch_cuda_arch_list="")
    assert target_capability(cpu, matrix) is None
    validate_target(cpu, matrix)
    with pytest.raises(
        IncompatibleTarget, match=r"rows for CUDA cpu have torch 2\.11\.0, 2\.13\.0, 2\.15\.0"
    ):
        validate_target(target("cpu", cuda="cpu", torch="2.7.1", torch_cuda_arch_list=""), matrix)


# --- the families data and the inventory's extras --------------------------------------------

FAMILY_PAIRS = {
    "2.1.2": ("0.16.2", "2.1.2"),
    "2.3.1": ("0.18.1", "2.3.1"),
    "2.4.1": ("0.19.1", "2.4.1"),
    "2.5.1": ("0.20.1", "2.5.1"),
    "2.6.0": ("0.21.0", "2.6.0"),
    "2.7.0": ("0.22.0", "2.7.0"),
    "2.7.1": ("0.22.1", "2.7.1"),
    "2.8.0": ("0.23.0", "2.8.0"),
    "2.9.0": ("0.24.0", "2.9.0"),
    "2.9.1": ("0.24.1", "2.9.1"),
    "2.10.0": ("0.25.0", "2.10.0"),
    "2.11.0": ("0.26.0", "2.11.0"),
    "2.12.0": ("0.27.0", None),  # no torchaudio exists past 2.11
    "2.13.0": ("0.28.0", None),
    "2.14.1": ("0.29.1", None),
}


def test_families_are_the_real_pairs(matrix: Matrix) -> None:
    got = {f.torch: (f.torchvision, f.torchaudio) for f in matrix.families}
    assert got == FAMILY_PAIRS
    assert matrix.family("2.11") == Family("2.11.0", "0.26.0", "2.11.0")  # compared as versions
    assert matrix.family("2.15.0") is None


def test_families_are_optional_in_a_matrix() -> None:
    data = raw_matrix()
    del data["families"]
    assert load_matrix(data).families == ()


def test_extra_merges_rows_gpus_and_families_over_the_file(matrix: Matrix) -> None:
    extra = {
        "gpus": {"rtx6000": "12.0", "h100": "9.0"},
        "rows": [
            {  # same CUDA + torch as a file row: replaces it
                "cuda": "13.0",
                "torch": "2.11.0",
                "index": "https://mirror.example/cu130",
                "arch_list": "8.9;12.0",
                "ptx": None,
                "min_driver": "580.82.07",
            },
            {
                "cuda": "13.2",
                "torch": "2.16.0",
                "index": "local",
                "arch_list": "12.0",
                "ptx": None,
                "min_driver": "595.0",
            },
        ],
        "families": [
            {"torch": "2.16.0", "torchvision": "0.31.0", "torchaudio": None},
            {"torch": "2.13.0", "torchvision": "0.28.1", "torchaudio": None},
        ],
    }
    merged = load_matrix(raw_matrix(), extra=extra)
    assert merged.capability("rtx6000") == "12.0" and merged.capability("rtx4090") == "8.9"
    row = merged.row("13.0", "2.11.0")
    assert row.index == "https://mirror.example/cu130" and row.min_driver == "580.82.07"
    assert len(merged.rows) == len(matrix.rows) + 1
    assert merged.row("13.2", "2.16.0").index == "local"
    assert merged.family("2.16.0") == Family("2.16.0", "0.31.0", None)
    assert merged.family("2.13.0").torchvision == "0.28.1"
    assert len(merged.families) == len(matrix.families) + 1
    assert load_matrix(raw_matrix(), extra={}) == matrix  # nothing added: the file's matrix


@pytest.mark.parametrize(
    ("extra", "where", "fix"),
    [
        ({"row": []}, "cuda_torch_matrix_extra", "only the keys gpus, rows, families"),
        ({"rows": {}}, "cuda_torch_matrix_extra.rows", "one row per pair"),
        (
            {"rows": [{"cuda": "13.0", "torch": 2.11}]},
            "cuda_torch_matrix_extra.rows[0]",
            "exactly the keys",
        ),
        (
            {
                "rows": [
                    {
                        "cuda": "13.0",
                        "torch": 2.11,
                        "index": "local",
                        "arch_list": "12.0",
                        "ptx": None,
                        "min_driver": None,
                    }
                ]
            },
            "cuda_torch_matrix_extra.rows[0].torch",
            "quoted string",
        ),
        ({"gpus": {"x": "89"}}, "cuda_torch_matrix_extra.gpus.x", "X.Y"),
        (
            {"families": [{"torch": "2.16.0", "torchvision": "0.31.0"}]},
            "cuda_torch_matrix_extra.families[0]",
            "torchaudio",
        ),
    ],
)
def test_extra_errors_name_the_inventory_variable(extra: Any, where: str, fix: str) -> None:
    with pytest.raises(MatrixError) as info:
        load_matrix(raw_matrix(), extra=extra)
    assert info.value.where == where and fix in str(info.value), str(info.value)


def test_matrix_path_and_config_matrix(tmp_path: Path) -> None:
    assert matrix_path(tmp_path) == tmp_path / "playbooks" / "vars" / "cuda_torch_matrix.yml"
    assert matrix_path(tmp_path, "m.yml") == tmp_path / "m.yml"
    assert matrix_path(tmp_path, "/abs/m.yml") == Path("/abs/m.yml")
    data = raw_matrix()
    data["rows"] = [r for r in data["rows"] if r["cuda"] == "cpu"]
    own = tmp_path / "own.yml"
    own.write_text(yaml.safe_dump({MATRIX_VAR: data}))

    cfg = SimpleNamespace(
        cuda_torch_matrix_file=str(own), cuda_torch_matrix_extra={"gpus": {"rtx6000": "12.0"}}
    )
    matrix = config_matrix(cfg, tmp_path)
    assert {r.cuda for r in matrix.rows} == {"cpu"} and matrix.capability("rtx6000") == "12.0"
    cfg.cuda_torch_matrix_file = str(tmp_path / "missing.yml")
    with pytest.raises(MatrixError, match=r"cannot be read.*cuda_torch_matrix_file"):
        config_matrix(cfg, tmp_path)
