"""GPU x CUDA x torch compatibility: the rules are data (``playbooks/vars/cuda_torch_matrix.yml``).

A GPU of compute capability X.Y is *served* by compiled code (SASS) for X.Z with Z <= Y
(sm_86 runs on an 8.9 card), or by PTX of any arch <= X.Y (the driver JIT-compiles it).
``serves`` implements that rule for both spellings that occur: ``TORCH_CUDA_ARCH_LIST``
(``"7.5;8.6;9.0+PTX"``) and ``torch.cuda.get_arch_list()`` (``["sm_75", "compute_90"]``).
Arch-specific code (``sm_90a``) runs only on exactly that arch.

``validate_target`` refuses a target before anything is built: a GPU its wheels do not
serve (the RTX 5090 on CUDA 12.4), a torch/CUDA pair no row lists, a
``TORCH_CUDA_ARCH_LIST`` without code for the GPU.

Beside the rows, ``families`` lists the torchvision/torchaudio releases built for each torch
(``torch_family`` fills a target's family from them). The inventory adds GPUs, rows and
families with ``cuda_torch_matrix_extra`` (merged over the file: a row with the same CUDA and
torch, or a family with the same torch, replaces the file's) and may point at another file
with ``cuda_torch_matrix_file`` (``config_matrix``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible.module_utils.config import CPU, GpuTarget
from packaging.version import InvalidVersion, Version

MATRIX_VAR = "cuda_torch_matrix"
EXTRA_VAR = "cuda_torch_matrix_extra"
FILE_VAR = "cuda_torch_matrix_file"
DEFAULT_MATRIX_FILE = Path("playbooks") / "vars" / "cuda_torch_matrix.yml"
_MATRIX_KEYS = ("gpus", "rows", "families")
_ROW_KEYS = ("cuda", "torch", "index", "arch_list", "ptx", "min_driver")
_FAMILY_KEYS = ("torch", "torchvision", "torchaudio")
_CAPABILITY_RE = re.compile(r"^(\d+)\.(\d)$")
_DOTTED_RE = re.compile(r"^(\d+)\.(\d)([af]?)(\+PTX)?$")
_TORCH_STYLE_RE = re.compile(r"^(sm|compute)_(\d+)(\d)([af]?)$")


class MatrixError(ValueError):
    """The matrix file itself is malformed: where (file and key), what, and the fix."""

    def __init__(self, where: str, what: str, fix: str) -> None:
        self.where = where
        self.what = what
        self.fix = fix
        super().__init__(f"{where}: {what}. Fix: {fix}")


class IncompatibleTarget(ValueError):
    """A GPU target cannot work as configured; the message names the target and the fix."""


@dataclass(frozen=True, order=True)
class Arch:
    """One compiled arch: ``major.minor``, ``kind`` "sass" or "ptx", ``variant`` "", "a" or "f"."""

    major: int
    minor: int
    kind: str = "sass"
    variant: str = ""

    @property
    def sm(self) -> str:
        return f"sm_{self.major}{self.minor}{self.variant}"


@dataclass(frozen=True)
class MatrixRow:
    cuda: str
    torch: str
    index: str
    arch_list: str
    ptx: str | None
    min_driver: str | None

    @property
    def tag(self) -> str:
        """The wheel index tag: ``cu128`` for CUDA 12.8, ``cpu`` for CPU wheels."""
        return CPU if self.cuda == CPU else "cu" + self.cuda.replace(".", "")

    @property
    def served_arches(self) -> str:
        """``arch_list`` plus the PTX entry, in TORCH_CUDA_ARCH_LIST form."""
        if self.ptx is None:
            return self.arch_list
        return ";".join(filter(None, (self.arch_list, f"{self.ptx}+PTX")))


@dataclass(frozen=True)
class Family:
    """The torchvision and torchaudio releases built for one torch (torchaudio None: none)."""

    torch: str
    torchvision: str
    torchaudio: str | None


@dataclass(frozen=True)
class Matrix:
    gpus: tuple[tuple[str, str], ...]
    rows: tuple[MatrixRow, ...]
    families: tuple[Family, ...] = ()

    def capability(self, gpu: str) -> str | None:
        return dict(self.gpus).get(gpu)

    def family(self, torch: str) -> Family | None:
        """The known family of ``torch`` (compared as versions: ``2.7`` is ``2.7.0``)."""
        for family in self.families:
            if Version(family.torch) == Version(torch):
                return family
        return None

    def rows_for(self, cuda: str) -> tuple[MatrixRow, ...]:
        return tuple(row for row in self.rows if row.cuda == cuda)

    def row(self, cuda: str, torch: str) -> MatrixRow | None:
        for row in self.rows:
            if row.cuda == cuda and Version(row.torch) == Version(torch):
                return row
        return None


# ---------------------------------------------------------------------------------------------
# The arch rule.


def parse_capability(capability: str) -> tuple[int, int]:
    """``"12.0"`` or ``"sm_120"`` -> ``(12, 0)``; raises ValueError otherwise."""
    text = capability.strip()
    match = _CAPABILITY_RE.match(text)
    if match:
        return int(match.group(1)), int(match.group(2))
    match = _TORCH_STYLE_RE.match(text)
    if match and match.group(1) == "sm" and not match.group(4):
        return int(match.group(2)), int(match.group(3))
    raise ValueError(f"{capability!r} is not a compute capability; write it as X.Y, e.g. '8.9'")


def parse_arch_list(arch_list: str | Sequence[str]) -> tuple[Arch, ...]:
    """Parse either arch spelling into ``Arch`` entries (``X.Y+PTX`` gives SASS and PTX).

    Strings are split on ``;``, ``,`` or whitespace; sequences are taken item by item.
    """
    items = re.split(r"[;,\s]+", arch_list) if isinstance(arch_list, str) else list(arch_list)
    arches: list[Arch] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        dotted = _DOTTED_RE.match(item)
        if dotted:
            major, minor, variant = int(dotted.group(1)), int(dotted.group(2)), dotted.group(3)
            arches.append(Arch(major, minor, "sass", variant))
            if dotted.group(4):
                arches.append(Arch(major, minor, "ptx", variant))
            continue
        torch_style = _TORCH_STYLE_RE.match(item)
        if torch_style:
            kind = "sass" if torch_style.group(1) == "sm" else "ptx"
            arches.append(
                Arch(
                    int(torch_style.group(2)), int(torch_style.group(3)), kind, torch_style.group(4)
                )
            )
            continue
        raise ValueError(
            f"arch entry {item!r} is neither X.Y[+PTX] nor sm_XY/compute_XY; "
            "write e.g. '8.6;9.0+PTX' or ['sm_86', 'compute_90']"
        )
    return tuple(arches)


def arch_serves(arch: Arch, major: int, minor: int, *, allow_ptx: bool = True) -> bool:
    """Does this one compiled arch run on a GPU of capability ``major.minor``?"""
    if arch.variant == "a":
        return (arch.major, arch.minor) == (major, minor) and (arch.kind == "sass" or allow_ptx)
    if arch.kind == "ptx":
        return allow_ptx and (arch.major, arch.minor) <= (major, minor)
    return arch.major == major and arch.minor <= minor


def serves(arch_list: str | Sequence[str], capability: str, *, allow_ptx: bool = True) -> bool:
    """True when code compiled for ``arch_list`` runs on a GPU of ``capability``.

    Same major with a lower-or-equal minor (sm_86 on 8.9), or PTX of a lower-or-equal arch
    (unless ``allow_ptx`` is False). Accepts ``"7.5;8.6;9.0+PTX"`` and
    ``["sm_75", "sm_86", "compute_90"]``.
    """
    major, minor = parse_capability(capability)
    return any(
        arch_serves(arch, major, minor, allow_ptx=allow_ptx) for arch in parse_arch_list(arch_list)
    )


# ---------------------------------------------------------------------------------------------
# Loading the data file.


def _text(value: Any, where: str, example: str) -> str:
    if not isinstance(value, str):
        raise MatrixError(
            where, f"must be a quoted string, got {value!r}", f"write e.g. '{example}'"
        )
    return value


def _load_gpus(gpus_data: Any, where_gpus: str) -> list[tuple[str, str]]:
    if not isinstance(gpus_data, Mapping):
        raise MatrixError(where_gpus, "must be a mapping", "e.g. rtx4090: '8.9'")
    gpus: list[tuple[str, str]] = []
    for name, capability in gpus_data.items():
        where = f"{where_gpus}.{name}"
        text = _text(capability, where, "8.9")
        try:
            parse_capability(text)
        except ValueError as exc:
            raise MatrixError(where, str(exc), "write the compute capability as X.Y") from exc
        if not _CAPABILITY_RE.match(text):
            raise MatrixError(where, f"{text!r} is not X.Y", "write e.g. '12.0'")
        gpus.append((str(name), text))
    return gpus


def _load_row(item: Any, where: str) -> MatrixRow:
    if not isinstance(item, Mapping) or set(item) != set(_ROW_KEYS):
        keys = sorted(item) if isinstance(item, Mapping) else type(item).__name__
        raise MatrixError(where, f"has {keys}", f"give exactly the keys {', '.join(_ROW_KEYS)}")
    cuda = _text(item["cuda"], f"{where}.cuda", "12.8")
    torch = _text(item["torch"], f"{where}.torch", "2.7.1")
    try:
        Version(torch)
        if cuda != CPU:
            Version(cuda)
    except InvalidVersion as exc:
        raise MatrixError(where, str(exc), "write versions like '12.8' and '2.7.1'") from exc
    arch_list = _text(item["arch_list"], f"{where}.arch_list", "7.5;8.0;8.6;9.0")
    ptx = item["ptx"]
    min_driver = item["min_driver"]
    if ptx is not None:
        ptx = _text(ptx, f"{where}.ptx", "9.0")
    if min_driver is not None:
        min_driver = _text(min_driver, f"{where}.min_driver", "570.26")
    try:
        parse_arch_list(arch_list)
        if ptx is not None:
            parse_capability(ptx)
    except ValueError as exc:
        raise MatrixError(where, str(exc), "write arches as X.Y separated by ';'") from exc
    if cuda == CPU and (arch_list or ptx or min_driver):
        raise MatrixError(where, "a cpu row lists arches or a driver", "leave them empty/null")
    if cuda != CPU and not arch_list:
        raise MatrixError(where, "a CUDA row lists no arches", "copy get_arch_list() here")
    index = _text(item["index"], f"{where}.index", "https://download.pytorch.org/whl/cu128")
    return MatrixRow(cuda, torch, index, arch_list, ptx, min_driver)


def _load_rows(rows_data: Any, where_rows: str) -> list[MatrixRow]:
    if not isinstance(rows_data, list):
        raise MatrixError(where_rows, "must be a list", "add one row per pair")
    rows: list[MatrixRow] = []
    seen: dict[tuple[str, Version], int] = {}
    for i, item in enumerate(rows_data):
        where = f"{where_rows}[{i}]"
        row = _load_row(item, where)
        key = (row.cuda, Version(row.torch))
        if key in seen:
            raise MatrixError(
                where,
                f"repeats rows[{seen[key]}] (CUDA {row.cuda}, torch {row.torch})",
                "keep one row",
            )
        seen[key] = i
        rows.append(row)
    return rows


def _version_text(value: Any, where: str, example: str) -> str:
    text = _text(value, where, example)
    try:
        version = Version(text)
    except InvalidVersion as exc:
        raise MatrixError(where, f"{text!r} is not a version", f"write e.g. '{example}'") from exc
    if version.local:
        raise MatrixError(
            where, f"{text!r} carries the local label +{version.local}", f"write '{version.public}'"
        )
    return text


def _load_families(families_data: Any, where_families: str) -> list[Family]:
    if not isinstance(families_data, list):
        raise MatrixError(
            where_families,
            "must be a list",
            "write - {torch: '2.11.0', torchvision: '0.26.0', torchaudio: '2.11.0'}",
        )
    families: list[Family] = []
    seen: dict[Version, int] = {}
    for i, item in enumerate(families_data):
        where = f"{where_families}[{i}]"
        if not isinstance(item, Mapping) or set(item) != set(_FAMILY_KEYS):
            keys = sorted(item) if isinstance(item, Mapping) else type(item).__name__
            raise MatrixError(
                where,
                f"has {keys}",
                f"give exactly the keys {', '.join(_FAMILY_KEYS)} (torchaudio: null where "
                "no torchaudio exists for that torch)",
            )
        torch = _version_text(item["torch"], f"{where}.torch", "2.11.0")
        vision = _version_text(item["torchvision"], f"{where}.torchvision", "0.26.0")
        audio = item["torchaudio"]
        if audio is not None:
            audio = _version_text(audio, f"{where}.torchaudio", "2.11.0")
        key = Version(torch)
        if key in seen:
            raise MatrixError(
                where, f"repeats families[{seen[key]}] (torch {torch})", "keep one pair per torch"
            )
        seen[key] = i
        families.append(Family(torch, vision, audio))
    return families


def _check_sections(data: Any, source: str, required: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping) or not set(data) <= set(_MATRIX_KEYS):
        keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise MatrixError(
            source,
            f"has {keys}",
            f"give only the keys {', '.join(_MATRIX_KEYS)} (families optional)",
        )
    for key in required:
        if key not in data:
            raise MatrixError(
                source,
                f"has {sorted(data)}, no {key}",
                f"give the keys gpus and rows (families optional); add {key}:",
            )
    return data


def _given(data: Mapping[str, Any], key: str, empty: Any) -> Any:
    """``data[key]``, or ``empty`` where it is absent or null (a wrong type is still refused)."""
    value = data.get(key)
    return empty if value is None else value


def merge_matrix(base: Matrix, extra: Any, source: str = EXTRA_VAR) -> Matrix:
    """``base`` with ``extra`` (``{gpus:, rows:, families:}``, each optional) merged over it.

    A GPU of the same name, a row with the same CUDA and torch, a family with the same torch
    replace the base's; the others are added. Errors name ``<source>.rows[i].<key>``.
    """
    if extra is None:
        return base
    data = _check_sections(extra, source, ())
    gpus = dict(base.gpus)
    gpus.update(_load_gpus(_given(data, "gpus", {}), f"{source}.gpus"))
    rows = list(base.rows)
    for row in _load_rows(_given(data, "rows", []), f"{source}.rows"):
        key = (row.cuda, Version(row.torch))
        same = [i for i, old in enumerate(rows) if (old.cuda, Version(old.torch)) == key]
        if same:
            rows[same[0]] = row
        else:
            rows.append(row)
    families = list(base.families)
    for family in _load_families(_given(data, "families", []), f"{source}.families"):
        same = [i for i, old in enumerate(families) if Version(old.torch) == Version(family.torch)]
        if same:
            families[same[0]] = family
        else:
            families.append(family)
    return Matrix(gpus=tuple(gpus.items()), rows=tuple(rows), families=tuple(families))


def load_matrix(data: Mapping[str, Any], source: str = MATRIX_VAR, extra: Any = None) -> Matrix:
    """Build a ``Matrix`` from the parsed YAML (the mapping under ``cuda_torch_matrix``), with
    the inventory's ``cuda_torch_matrix_extra`` merged over it when given."""
    _check_sections(data, source, ("gpus", "rows"))
    gpus = _load_gpus(data["gpus"], f"{source}.gpus")
    if not gpus:
        raise MatrixError(f"{source}.gpus", "must be a non-empty mapping", "e.g. rtx4090: '8.9'")
    rows = _load_rows(data["rows"], f"{source}.rows")
    if not rows:
        raise MatrixError(f"{source}.rows", "must be a non-empty list", "add one row per pair")
    families = _load_families(_given(data, "families", []), f"{source}.families")
    matrix = Matrix(gpus=tuple(gpus), rows=tuple(rows), families=tuple(families))
    return merge_matrix(matrix, extra)


def load_matrix_file(path: str | Path, extra: Any = None) -> Matrix:
    """Read the YAML file holding ``cuda_torch_matrix:`` and build the ``Matrix`` (with the
    inventory's ``cuda_torch_matrix_extra`` merged over it when given)."""
    import yaml  # Ansible's own dependency; imported here so pure users need not have it

    file = Path(path)
    try:
        with file.open(encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise MatrixError(
            str(file), f"cannot be read ({exc.strerror})", f"check {FILE_VAR} or the file"
        ) from exc
    if not isinstance(document, Mapping) or MATRIX_VAR not in document:
        raise MatrixError(
            str(file), f"has no top-level {MATRIX_VAR}", f"start it with {MATRIX_VAR}:"
        )
    return load_matrix(document[MATRIX_VAR], f"{file}:{MATRIX_VAR}", extra)


def matrix_path(repo_root: str | Path, override: str | None = None) -> Path:
    """The matrix file: ``cuda_torch_matrix_file`` (relative to the repo root unless
    absolute), else ``playbooks/vars/cuda_torch_matrix.yml`` of the repo."""
    root = Path(repo_root)
    if override:
        path = Path(override)
        return path if path.is_absolute() else root / path
    return root / DEFAULT_MATRIX_FILE


def config_matrix(config: Any, repo_root: str | Path) -> Matrix:
    """The matrix a configuration plans with: its file and its ``cuda_torch_matrix_extra``."""
    return load_matrix_file(
        matrix_path(repo_root, getattr(config, "cuda_torch_matrix_file", None)),
        getattr(config, "cuda_torch_matrix_extra", None),
    )


# ---------------------------------------------------------------------------------------------
# Validation of one target.


def _short_version(version: str) -> str:
    """``2.7.0`` -> ``2.7``; ``2.7.1`` stays."""
    parts = version.split(".")
    return ".".join(parts[:2]) if len(parts) == 3 and parts[2] == "0" else version


def _cuda_key(row: MatrixRow) -> Version:
    return Version("0") if row.cuda == CPU else Version(row.cuda)


def minimum_for(capability: str, matrix: Matrix) -> tuple[MatrixRow, MatrixRow] | None:
    """The rows with the lowest CUDA and the lowest torch that serve ``capability``, or None."""
    serving = [
        row for row in matrix.rows if row.cuda != CPU and serves(row.served_arches, capability)
    ]
    if not serving:
        return None
    lowest_cuda = min(serving, key=lambda row: (_cuda_key(row), Version(row.torch)))
    lowest_torch = min(serving, key=lambda row: (Version(row.torch), _cuda_key(row)))
    return lowest_cuda, lowest_torch


def target_capability(target: GpuTarget, matrix: Matrix) -> str | None:
    """The compute capability of the target's GPU (None for cpu); raises if unknown."""
    if target.is_cpu:
        return None
    capability = matrix.capability(target.gpu)
    if capability is None:
        known = ", ".join(name for name, _ in matrix.gpus)
        raise IncompatibleTarget(
            f"{target.name}: unknown GPU {target.gpu!r} (gpu_targets.{target.name}.gpu); "
            f"known: {known}. Fix: set gpu_targets.{target.name}.gpu to one of them, or add the "
            f"GPU and its compute capability under {MATRIX_VAR}.gpus"
        )
    return capability


def validate_target(target: GpuTarget, matrix: Matrix) -> None:
    """Raise ``IncompatibleTarget`` unless the target's GPU, CUDA, torch and arch list fit."""
    where = f"gpu_targets.{target.name}"
    asks = f"{where} asks for CUDA {target.cuda} / torch {target.torch}"
    capability = target_capability(target, matrix)
    if capability is not None:
        major, minor = parse_capability(capability)
        sm = f"sm_{major}{minor}"
        same_cuda = matrix.rows_for(target.cuda)
        if same_cuda and not any(serves(row.served_arches, capability) for row in same_cuda):
            lowest = minimum_for(capability, matrix)
            if lowest is None:
                raise IncompatibleTarget(
                    f"{target.name}: no row of {MATRIX_VAR} serves {sm} ({target.gpu}, "
                    f"{capability}); {asks}. Fix: add a row whose wheels are built for {sm}"
                )
            cuda_row, torch_row = lowest
            raise IncompatibleTarget(
                f"{target.name}: {sm} needs CUDA >= {cuda_row.cuda} and torch >= "
                f"{_short_version(torch_row.torch)} ({cuda_row.tag} or newer); {asks}. "
                f"Fix: set cuda: '{cuda_row.cuda}' and torch: '{cuda_row.torch}' in {where} "
                "(or a newer pair the matrix lists)"
            )
    row = matrix.row(target.cuda, target.torch)
    if row is None:
        offered = [r.torch for r in matrix.rows_for(target.cuda)]
        choices = (
            f"rows for CUDA {target.cuda} have torch {', '.join(offered)}"
            if offered
            else f"no row has CUDA {target.cuda}"
        )
        raise IncompatibleTarget(
            f"{target.name}: no {MATRIX_VAR} row pairs CUDA {target.cuda} with torch "
            f"{target.torch} ({choices}); {asks}. Fix: pick a listed pair, or add a row for "
            "this one after checking the wheels exist"
        )
    if capability is None:
        return
    if not serves(row.served_arches, capability):
        raise IncompatibleTarget(
            f"{target.name}: torch {row.torch} for CUDA {row.cuda} is built for "
            f"{row.served_arches}, which does not run on {target.gpu} ({capability}); {asks}. "
            "Fix: pick a torch version whose row lists that arch"
        )
    _validate_arch_list(target, capability, row, matrix)


def _validate_arch_list(target: GpuTarget, capability: str, row: MatrixRow, matrix: Matrix) -> None:
    where = f"gpu_targets.{target.name}.torch_cuda_arch_list"
    arch_list = target.torch_cuda_arch_list
    if not serves(arch_list, capability, allow_ptx=False):
        raise IncompatibleTarget(
            f"{target.name}: {where} is {arch_list!r}, which holds no code for {target.gpu} "
            f"({capability}; PTX of another arch is not accepted: it JIT-compiles at every "
            f"start). Fix: include '{capability}', e.g. TORCH_CUDA_ARCH_LIST='{capability}'"
        )
    ceiling = max(parse_arch_list(";".join(r.served_arches for r in matrix.rows_for(row.cuda))))
    for arch in parse_arch_list(arch_list):
        if (arch.major, arch.minor) > (ceiling.major, ceiling.minor):
            raise IncompatibleTarget(
                f"{target.name}: {where} lists {arch.major}.{arch.minor}, newer than anything "
                f"CUDA {row.cuda} builds for here (up to {ceiling.major}.{ceiling.minor}). "
                "Fix: drop that entry or move the target to a newer CUDA"
            )
