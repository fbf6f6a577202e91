"""Configuration model: the inventory variables of one build, validated into frozen dataclasses.

``load_config(vars)`` takes a plain dict (what Ansible hands a module: the values of the
variables named in ``TOP_LEVEL_KEYS``) and returns a ``Config`` or raises ``ConfigError``
naming the variable path (``gpu_targets.rtx5090.cuda``), what is wrong, and the fix.
Unknown keys are errors at every level, so a typo never silently falls back to a default.

Structure only: whether a GPU, CUDA and torch fit together is ``gpu_matrix``'s job.
Formats are written down in ``docs/formats.md`` (section "Configuration").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

DEFAULT_REGISTRY = "127.0.0.1:5000/aiclipse"
DEFAULT_OS_IMAGE = "ubuntu:22.04"
CPU = "cpu"

TOP_LEVEL_KEYS = (
    "registry",
    "os_base",
    "gpu_targets",
    "package_layers",
    "package_layers_exclude",
    "package_layers_replace",
    "comfyui",
    "manager",
    "cuda_torch_matrix_extra",
    "cuda_torch_matrix_file",
)
NO_MEMBER = "none"  # torchvision/torchaudio: none leaves that member out on purpose
_MATRIX_EXTRA_KEYS = ("gpus", "rows", "families")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_VERSION_RE = re.compile(r"^\d+(\.\d+)+$")
_TORCH_VERSION_RE = re.compile(r"^\d+\.\d+(\.\d+)?([a-z0-9.]*)?$")
_ARCH_ENTRY_RE = re.compile(r"^\d+\.\d+[af]?(\+PTX)?$")
_REPO_PREFIXES = ("https://", "http://", "ssh://", "git://", "git@", "file://", "/")
_MANAGER_SECURITY_LEVELS = ("strong", "normal", "normal-")
# auto: the package where the pinned ComfyUI ships manager_requirements.txt, else git
MANAGER_MODES = ("auto", "package", "git")


class ConfigError(ValueError):
    """A configuration value is wrong: ``where`` (variable path), ``what`` and ``fix``."""

    def __init__(self, where: str, what: str, fix: str) -> None:
        self.where = where
        self.what = what
        self.fix = fix
        super().__init__(f"{where}: {what}. Fix: {fix}")


class ConfigErrors(ConfigError):
    """Several configuration values are wrong: every one, one a line (``errors``)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.where, first.what, first.fix)
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class OsBase:
    """Where the OS base comes from: a pulled ``image`` or a ``debootstrap`` build."""

    source: str
    image: str | None = None
    suite: str | None = None
    mirror: str | None = None
    snapshot: str | None = None


@dataclass(frozen=True)
class GpuTarget:
    """One build target: a GPU (or ``cpu``) with its CUDA, torch and wheel source.

    ``gpu`` names the card in the matrix (defaults to the target name); ``base_image`` None
    means the target builds on the ``os-base`` node (torch wheels bring their CUDA runtime).
    """

    name: str
    gpu: str
    cuda: str
    torch: str
    torch_index_url: str | None
    torch_wheelhouse: str | None
    torch_cuda_arch_list: str
    base_image: str | None = None
    extra_libs: tuple[str, ...] = ()
    torchvision: str | None = None  # None: the matrix's family; "none": left out on purpose
    torchaudio: str | None = None
    torch_extra: tuple[str, ...] = ()  # more family members from the same index, pinned

    @property
    def is_cpu(self) -> bool:
        return self.cuda == CPU


@dataclass(frozen=True)
class PackageLayer:
    """One named package layer: pip requirement strings, in the order given."""

    name: str
    specs: tuple[str, ...]


@dataclass(frozen=True)
class GitSource:
    """A git repository and the ref to build from (the plan locks it to a commit)."""

    repo: str
    ref: str
    follow: str = ""  # nightly.yml moves ref to what this branch, tag or tag glob names


@dataclass(frozen=True)
class ManagerSource:
    """How ComfyUI-Manager is installed, and its security level.

    ``mode``: ``package`` is the ``comfyui-manager`` PyPI package that the pinned ComfyUI's
    ``manager_requirements.txt`` names (started with ``--enable-manager``); ``git`` is a clone
    of ``repo`` at ``ref`` in ``custom_nodes``; ``auto`` is ``package`` where that file exists
    at the pinned commit, else ``git`` (the plan decides: ``graph.manager_plan``)."""

    repo: str = ""
    ref: str = ""
    security_level: str = "normal"
    follow: str = ""
    mode: str = "auto"


@dataclass(frozen=True)
class Config:
    """The whole build configuration."""

    registry: str
    os_base: OsBase
    gpu_targets: tuple[GpuTarget, ...]
    package_layers: tuple[PackageLayer, ...]
    package_layers_exclude: tuple[str, ...]
    package_layers_replace: tuple[tuple[str, str], ...]
    comfyui: GitSource
    manager: ManagerSource
    # {gpus:, rows:, families:} merged over the matrix file (gpu_matrix.config_matrix checks
    # what is inside); None: nothing added
    cuda_torch_matrix_extra: Mapping[str, Any] | None = None
    cuda_torch_matrix_file: str | None = None  # None: playbooks/vars/cuda_torch_matrix.yml

    def target(self, name: str) -> GpuTarget:
        for target in self.gpu_targets:
            if target.name == name:
                return target
        known = ", ".join(t.name for t in self.gpu_targets)
        raise ConfigError(
            f"gpu_targets.{name}",
            f"no such target (defined: {known})",
            "pick one of the defined targets or add it to gpu_targets",
        )

    @property
    def replace_map(self) -> dict[str, str]:
        return dict(self.package_layers_replace)


# ---------------------------------------------------------------------------------------------
# Small checkers: each takes the variable path so errors can name it.


def _check_keys(
    value: Mapping[str, Any], where: str, allowed: tuple[str, ...], required: tuple[str, ...]
) -> None:
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        first = unknown[0]
        at = f"{where}.{first}" if where else first
        raise ConfigError(
            at,
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
            f"use only {', '.join(allowed)}",
        )
    for key in required:
        if key not in value or value[key] is None:
            at = f"{where}.{key}" if where else key
            raise ConfigError(at, "is required and missing", f"set {at}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            where, f"must be a mapping, got {type(value).__name__}", "write it as key: value pairs"
        )
    return value


def _string(value: Any, where: str, example: str) -> str:
    if isinstance(value, float):
        raise ConfigError(
            where,
            f"is the number {value!r}; YAML turns 12.10 into 12.1",
            f"quote it as a string, e.g. '{example}'",
        )
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, f"must be a non-empty string, got {value!r}", f"e.g. {example}")
    if value != value.strip():
        raise ConfigError(where, f"has surrounding whitespace: {value!r}", "remove the spaces")
    return value


def _optional_string(value: Any, where: str, example: str) -> str | None:
    return None if value is None else _string(value, where, example)


def _string_list(value: Any, where: str, example: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(
            where, f"must be a list of strings, got {type(value).__name__}", f"e.g. [{example}]"
        )
    return tuple(_string(item, f"{where}[{i}]", example) for i, item in enumerate(value))


def _name(value: Any, where: str) -> str:
    text = _string(value, where, "rtx5090")
    if not _NAME_RE.match(text):
        raise ConfigError(
            where,
            f"{text!r} is not a valid name",
            "use lower-case letters, digits, '-' and '_' (it becomes part of image tags)",
        )
    return text


def _repo(value: Any, where: str) -> str:
    text = _string(value, where, "https://github.com/comfyanonymous/ComfyUI.git")
    if not text.startswith(_REPO_PREFIXES):
        raise ConfigError(
            where,
            f"{text!r} is not a git URL",
            f"use a URL starting with one of {', '.join(_REPO_PREFIXES)}",
        )
    return text


# ---------------------------------------------------------------------------------------------
# Sections.


def _load_registry(value: Any) -> str:
    if value is None:
        return DEFAULT_REGISTRY
    text = _string(value, "registry", DEFAULT_REGISTRY)
    if "://" in text:
        raise ConfigError(
            "registry",
            f"{text!r} has a URL scheme",
            f"write host[:port]/namespace without a scheme, e.g. {DEFAULT_REGISTRY}",
        )
    if text.endswith("/") or " " in text:
        raise ConfigError(
            "registry",
            f"{text!r} ends with '/' or holds a space",
            f"write host[:port]/namespace, e.g. {DEFAULT_REGISTRY}",
        )
    return text


def _load_os_base(value: Any) -> OsBase:
    if value is None:
        return OsBase(source="image", image=DEFAULT_OS_IMAGE)
    data = _mapping(value, "os_base")
    source = data.get("source")
    if source == "image":
        _check_keys(data, "os_base", ("source", "image"), ("image",))
        return OsBase(source="image", image=_string(data["image"], "os_base.image", "ubuntu:22.04"))
    if source == "debootstrap":
        _check_keys(data, "os_base", ("source", "suite", "mirror", "snapshot"), ("suite", "mirror"))
        mirror = _string(data["mirror"], "os_base.mirror", "http://deb.debian.org/debian")
        if not mirror.startswith(("http://", "https://", "file://")):
            raise ConfigError(
                "os_base.mirror",
                f"{mirror!r} is not an http(s) or file URL",
                "e.g. http://deb.debian.org/debian",
            )
        return OsBase(
            source="debootstrap",
            suite=_string(data["suite"], "os_base.suite", "bookworm"),
            mirror=mirror,
            snapshot=_optional_string(data.get("snapshot"), "os_base.snapshot", "20250101T000000Z"),
        )
    raise ConfigError(
        "os_base.source",
        f"must be 'image' or 'debootstrap', got {source!r}",
        "set os_base.source: image (with image:) or debootstrap (with suite: and mirror:)",
    )


_TARGET_KEYS = (
    "gpu",
    "cuda",
    "torch",
    "torchvision",
    "torchaudio",
    "torch_index_url",
    "torch_wheelhouse",
    "torch_cuda_arch_list",
    "base_image",
    "extra_libs",
    "torch_extra",
)


def check_arch_list_syntax(value: str, where: str) -> str:
    """Check a ``TORCH_CUDA_ARCH_LIST``: semicolon-separated ``X.Y`` entries, optional ``+PTX``."""
    if value == "":
        return value
    entries = value.split(";")
    for entry in entries:
        if not _ARCH_ENTRY_RE.match(entry):
            raise ConfigError(
                where,
                f"entry {entry!r} of {value!r} is not X.Y or X.Y+PTX",
                "separate entries with semicolons and no spaces, e.g. '8.9;12.0'",
            )
    if len(set(entries)) != len(entries):
        raise ConfigError(where, f"{value!r} repeats an entry", "list each arch once")
    return value


def _load_target(name: str, value: Any) -> GpuTarget:
    where = f"gpu_targets.{name}"
    data = _mapping(value, where)
    _check_keys(data, where, _TARGET_KEYS, ("cuda", "torch"))
    cuda = _string(data["cuda"], f"{where}.cuda", "12.8")
    if cuda != CPU and not _VERSION_RE.match(cuda):
        raise ConfigError(
            f"{where}.cuda", f"{cuda!r} is not a CUDA version", "write e.g. '12.8', or 'cpu'"
        )
    torch = _string(data["torch"], f"{where}.torch", "2.7.1")
    if not _TORCH_VERSION_RE.match(torch):
        raise ConfigError(
            f"{where}.torch",
            f"{torch!r} is not a torch version",
            "write the release without a local tag, e.g. '2.7.1'",
        )
    index_url = _optional_string(
        data.get("torch_index_url"),
        f"{where}.torch_index_url",
        "https://download.pytorch.org/whl/cu128",
    )
    wheelhouse = _optional_string(
        data.get("torch_wheelhouse"), f"{where}.torch_wheelhouse", "/opt/wheels"
    )
    if index_url is not None and wheelhouse is not None:
        raise ConfigError(
            where,
            "sets both torch_index_url and torch_wheelhouse",
            "keep one: an index URL, or a local wheelhouse directory",
        )
    if index_url is not None and not index_url.startswith(("https://", "http://", "file://")):
        raise ConfigError(
            f"{where}.torch_index_url",
            f"{index_url!r} is not a URL",
            "e.g. https://download.pytorch.org/whl/cu128 (for a directory use torch_wheelhouse)",
        )
    if wheelhouse is not None and not wheelhouse.startswith("/"):
        raise ConfigError(
            f"{where}.torch_wheelhouse",
            f"{wheelhouse!r} is not an absolute path",
            "give the wheelhouse directory as an absolute path, e.g. /opt/wheels",
        )
    arch_value = data.get("torch_cuda_arch_list")
    if cuda == CPU:
        if arch_value not in (None, ""):
            raise ConfigError(
                f"{where}.torch_cuda_arch_list",
                f"is {arch_value!r} on a cpu target",
                "remove torch_cuda_arch_list from cpu targets",
            )
        arch_list = ""
    else:
        if arch_value is None:
            raise ConfigError(
                f"{where}.torch_cuda_arch_list",
                "is required on a CUDA target",
                "set the GPU's compute capability, e.g. '12.0' for an RTX 5090",
            )
        arch_list = check_arch_list_syntax(
            _string(arch_value, f"{where}.torch_cuda_arch_list", "8.9;12.0"),
            f"{where}.torch_cuda_arch_list",
        )
    base_image = _optional_string(
        data.get("base_image"), f"{where}.base_image", "nvidia/cuda:12.8.1-runtime-ubuntu22.04"
    )
    return GpuTarget(
        name=name,
        gpu=_name(data["gpu"], f"{where}.gpu") if data.get("gpu") is not None else name,
        cuda=cuda,
        torch=torch,
        torch_index_url=index_url,
        torch_wheelhouse=wheelhouse,
        torch_cuda_arch_list=arch_list,
        base_image=base_image,
        extra_libs=_string_list(data.get("extra_libs"), f"{where}.extra_libs", "libgl1"),
        torchvision=_member_version(data.get("torchvision"), f"{where}.torchvision", "0.26.0"),
        torchaudio=_member_version(data.get("torchaudio"), f"{where}.torchaudio", "2.11.0"),
        torch_extra=_torch_extra(data.get("torch_extra"), f"{where}.torch_extra"),
    )


def _member_version(value: Any, where: str, example: str) -> str | None:
    """torchvision/torchaudio: a release without local label, ``none``, or None (the family's)."""
    text = _optional_string(value, where, example)
    if text is None or text == NO_MEMBER:
        return text
    if not _TORCH_VERSION_RE.match(text) or "+" in text:
        raise ConfigError(
            where,
            f"{text!r} is not a release version",
            f"write the release without a local tag, e.g. '{example}'; leave it out to take "
            f"the matrix's family, or write {NO_MEMBER} to build without it",
        )
    return text


_FAMILY_NAMES = ("torch", "torchvision", "torchaudio")


def _torch_extra(value: Any, where: str) -> tuple[str, ...]:
    specs = _string_list(value, where, "xformers==0.0.33")
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        try:
            req = Requirement(spec)
        except InvalidRequirement as exc:
            raise ConfigError(
                at, f"{spec!r} is not a pip requirement ({exc})", "e.g. 'xformers==0.0.33'"
            ) from exc
        name = canonicalize_name(req.name)
        if name in _FAMILY_NAMES:
            raise ConfigError(
                at,
                f"names {name}, which the target's own {name} key sets",
                f"drop it here and set {where.rsplit('.', 1)[0]}.{name}",
            )
        if name in seen:
            raise ConfigError(at, f"repeats {where}[{seen[name]}] ({name})", "list it once")
        if not any(s.operator in ("==", "===") for s in req.specifier) or req.url:
            raise ConfigError(
                at,
                f"{spec!r} does not pin a version",
                f"pin it like the rest of the family, e.g. '{req.name}==<version>'",
            )
        seen[name] = i
    return specs


def _load_matrix_extra(value: Any) -> Mapping[str, Any] | None:
    if value is None or value == {}:
        return None
    data = _mapping(value, "cuda_torch_matrix_extra")
    _check_keys(data, "cuda_torch_matrix_extra", _MATRIX_EXTRA_KEYS, ())
    return data


def _load_matrix_file(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _string(value, "cuda_torch_matrix_file", "/srv/aiclipse/cuda_torch_matrix.yml")


def _load_targets(value: Any) -> tuple[GpuTarget, ...]:
    if value is None:
        raise ConfigError("gpu_targets", "is required and missing", "define at least one target")
    data = _mapping(value, "gpu_targets")
    if not data:
        raise ConfigError("gpu_targets", "is empty", "define at least one target, e.g. cpu")
    targets = []
    for name in data:
        _name(name, f"gpu_targets.{name}")
        targets.append(_load_target(name, data[name]))
    return tuple(targets)


def _load_layers(value: Any) -> tuple[PackageLayer, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ConfigError(
            "package_layers",
            f"must be a list of layers, got {type(value).__name__}",
            "write - name: essentials / specs: [numpy, pillow]",
        )
    layers: list[PackageLayer] = []
    seen_layer: dict[str, int] = {}
    owner: dict[str, str] = {}
    errors: list[ConfigError] = []  # every spec problem at once (one round of edits)
    for i, item in enumerate(value):
        where = f"package_layers[{i}]"
        data = _mapping(item, where)
        _check_keys(data, where, ("name", "specs"), ("name", "specs"))
        name = _name(data["name"], f"{where}.name")
        if name in seen_layer:
            errors.append(
                ConfigError(
                    f"{where}.name",
                    f"layer {name!r} is already package_layers[{seen_layer[name]}]",
                    "give each layer a unique name",
                )
            )
        seen_layer.setdefault(name, i)
        specs = _string_list(data["specs"], f"{where}.specs", "numpy<2")
        if not specs:
            errors.append(
                ConfigError(
                    f"{where}.specs", f"is empty (layer {name})", "list at least one requirement"
                )
            )
        for j, spec in enumerate(specs):
            at = f"{where}.specs[{j}]"
            try:
                req = Requirement(spec)
            except InvalidRequirement as exc:
                errors.append(
                    ConfigError(
                        at, f"{spec!r} is not a pip requirement ({exc})", "e.g. 'numpy>=1.26,<2'"
                    )
                )
                continue
            key = canonicalize_name(req.name)
            if key in owner:
                errors.append(
                    ConfigError(
                        at,
                        f"{req.name} (layer {name}) is already requested by {owner[key]}",
                        "request each distribution in one layer only (the first that needs it)",
                    )
                )
                continue
            owner[key] = f"{at} (layer {name}: {spec!r})"
        layers.append(PackageLayer(name=name, specs=specs))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)
    return tuple(layers)


def _dist_name(value: Any, where: str) -> str:
    text = _string(value, where, "opencv-python")
    if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", text):
        raise ConfigError(where, f"{text!r} is not a distribution name", "e.g. opencv-python")
    return canonicalize_name(text)


def _load_exclude(value: Any) -> tuple[str, ...]:
    names = _string_list(value, "package_layers_exclude", "opencv-python")
    return tuple(_dist_name(n, f"package_layers_exclude[{i}]") for i, n in enumerate(names))


def _load_replace(value: Any, exclude: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    data = _mapping(value, "package_layers_replace")
    pairs: list[tuple[str, str]] = []
    for old, new in data.items():
        where = f"package_layers_replace.{old}"
        old_name = _dist_name(old, where)
        new_name = _dist_name(new, where)
        if old_name == new_name:
            raise ConfigError(where, "replaces a distribution with itself", "remove the entry")
        if old_name in exclude:
            raise ConfigError(
                where,
                f"{old_name} is also in package_layers_exclude",
                "keep it in one of package_layers_exclude and package_layers_replace",
            )
        pairs.append((old_name, new_name))
    replaced = {old for old, _ in pairs}
    for old, new in pairs:
        if new in replaced or new in exclude:
            raise ConfigError(
                f"package_layers_replace.{old}",
                f"the replacement {new} is itself replaced or excluded",
                "point the entry at the final distribution",
            )
    return tuple(sorted(pairs))


def _load_git(value: Any, where: str) -> GitSource:
    data = _mapping(value, where)
    _check_keys(data, where, ("repo", "ref", "follow"), ("repo", "ref"))
    return GitSource(
        repo=_repo(data["repo"], f"{where}.repo"),
        ref=_string(data["ref"], f"{where}.ref", "v0.3.40 or a full commit SHA"),
        follow=_string(data.get("follow", ""), f"{where}.follow", "master or v*")
        if "follow" in data
        else "",
    )


def _load_manager(value: Any) -> ManagerSource:
    data = _mapping(value, "manager")
    _check_keys(data, "manager", ("repo", "ref", "security_level", "follow", "mode"), ())
    level = data.get("security_level", "normal")
    if level not in _MANAGER_SECURITY_LEVELS:
        raise ConfigError(
            "manager.security_level",
            f"{level!r} is not allowed (weak levels let anyone install code remotely)",
            f"use one of {', '.join(_MANAGER_SECURITY_LEVELS)}",
        )
    mode = data.get("mode", "auto")
    if mode not in MANAGER_MODES:
        raise ConfigError(
            "manager.mode",
            f"{mode!r} is not a mode",
            f"use one of {', '.join(MANAGER_MODES)} (auto: the comfyui-manager package where "
            "ComfyUI ships manager_requirements.txt, else a git clone of manager.repo)",
        )
    if mode == "package":
        for key in ("repo", "ref", "follow"):
            if key in data:
                raise ConfigError(
                    f"manager.{key}",
                    "is not used with manager.mode: package (Manager is the comfyui-manager "
                    "package that ComfyUI's manager_requirements.txt names)",
                    f"remove manager.{key}, or set manager.mode: auto to keep the git pin for "
                    "a ComfyUI commit without manager_requirements.txt",
                )
    elif mode == "git" or any(key in data for key in ("repo", "ref", "follow")):
        for key in ("repo", "ref"):
            if data.get(key) is None:
                why = (
                    "with manager.mode: git"
                    if mode == "git"
                    else "once manager.repo, ref or follow is set (a git pin needs both)"
                )
                raise ConfigError(
                    f"manager.{key}",
                    f"is required {why}",
                    f"set manager.{key}, or (manager.mode: auto) leave out repo, ref and follow "
                    "for a ComfyUI commit that ships manager_requirements.txt",
                )
    return ManagerSource(
        repo=_repo(data["repo"], "manager.repo") if "repo" in data else "",
        ref=_string(data["ref"], "manager.ref", "3.38 or a full commit SHA")
        if "ref" in data
        else "",
        security_level=level,
        follow=_string(data["follow"], "manager.follow", "main or 3.*") if "follow" in data else "",
        mode=mode,
    )


def load_config(variables: Mapping[str, Any]) -> Config:
    """Validate the configuration variables and build a ``Config``; raises ``ConfigError``."""
    data = _mapping(variables, "(configuration)")
    _check_keys(data, "", TOP_LEVEL_KEYS, ("gpu_targets", "comfyui", "manager"))
    exclude = _load_exclude(data.get("package_layers_exclude"))
    return Config(
        registry=_load_registry(data.get("registry")),
        os_base=_load_os_base(data.get("os_base")),
        gpu_targets=_load_targets(data.get("gpu_targets")),
        package_layers=_load_layers(data.get("package_layers")),
        package_layers_exclude=exclude,
        package_layers_replace=_load_replace(data.get("package_layers_replace"), exclude),
        comfyui=_load_git(data["comfyui"], "comfyui"),
        manager=_load_manager(data["manager"]),
        cuda_torch_matrix_extra=_load_matrix_extra(data.get("cuda_torch_matrix_extra")),
        cuda_torch_matrix_file=_load_matrix_file(data.get("cuda_torch_matrix_file")),
    )
