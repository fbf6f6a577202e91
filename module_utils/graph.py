"""The layer graph: render every node's build context, hash it, ask the registry, plan builds.

Nodes: ``os-base`` -> ``base-common`` -> ``base-<target>`` (torch + package layers) ->
``<template>-<target>``. A node's hash covers its rendered Dockerfile, every file of its
context (sorted, content and +x only), its build args and its parent's hash, so the same
inputs give the same hash on any machine (BLD-7). A node whose hash tag is in the registry is
``cached``; the others are ``stale`` (with the reason, when a previous plan is known) and go
into a ``docker buildx bake`` file.
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import os
import re
import shlex
import shutil
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from ansible.module_utils.config import Config, GpuTarget
from ansible.module_utils.gitsource import (
    SourceUnreachable,
    read_file,
    require_commit,
    requirement_lines,
)
from ansible.module_utils.gpu_matrix import IncompatibleTarget, config_matrix, validate_target
from ansible.module_utils.hashing import file_sha256, node_hash, short, tree_entries
from ansible.module_utils.package_layers import (
    Layer,
    Resolution,
    ResolvedDist,
    ResolveError,
    ResolveOptions,
    apply_overrides,
    assign_layers,
    collision_problems,
    constraints_text,
    find_collisions,
    override_conflicts,
    resolve,
)
from ansible.module_utils.templates import Template, select_targets
from ansible.module_utils.torch_family import (
    CUDA_PREFIXES,
    TorchFamily,
    check_resolution,
    dropped_line_notes,
    family_for,
    family_notes,
    family_pins,
    from_target,
    requires_from_report,
    split_family_lines,
)
from ansible.module_utils.wheel_records import dist_records
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

IMAGE = "comfyui"
APT_PACKAGES = (
    "python3",
    "python3-venv",
    "git",
    "aria2",
    "openssh-server",
    "tini",
    "curl",
    "ca-certificates",
    "procps",
)
EXCLUDE = ("__pycache__", "*.pyc")
# ComfyUI >= 0.4 names the comfyui-manager package here (installed, started --enable-manager)
MANAGER_REQUIREMENTS = "manager_requirements.txt"


class PlanError(Exception):
    """The plan cannot be made; the message names what, where and the fix."""


@dataclass(frozen=True)
class BuilderCaps:
    """What the builders can do (from builder_host's buildx_facts; the weakest one counts)."""

    copy_link: bool = False
    named_contexts: bool = False
    cache_export: tuple[str, ...] = ("inline",)
    load: bool = False  # a builder outside the engine (docker-container): load the images


def weakest(facts: Sequence[Mapping[str, Any]]) -> BuilderCaps:
    """What every builder of a fleet can do, from each one's buildx facts: one bake file
    serves them all. A docker-container builder needs its images loaded into the engine."""
    if not facts:
        return BuilderCaps()
    copy_link = all(bool(f.get("copy_link", False)) for f in facts)
    exports = [tuple(f.get("cache_export", ("inline",))) for f in facts]
    shared = tuple(kind for kind in exports[0] if all(kind in other for other in exports[1:]))
    return BuilderCaps(
        copy_link=copy_link,
        named_contexts=copy_link,  # both arrived with BuildKit 0.10
        cache_export=shared or ("inline",),
        load=any(f.get("driver", "docker") != "docker" for f in facts),
    )


@dataclass(frozen=True)
class Settings:
    """Everything the plan needs besides the configuration and the templates."""

    repo_root: Path
    build_dir: Path
    os_base_ref: str
    cache_dir: Path
    python_version: str = "3.11"
    platform: str = "manylinux_2_36_x86_64"
    ca_bundle: str = "/etc/ssl/certs/ca-certificates.crt"
    jupyter_spec: str = "jupyterlab==4.4.10"
    filebrowser_url: str = ""
    filebrowser_sha256: str = ""
    user: str = "comfy"
    uid: int = 1000
    gid: int = 1000
    source: str = ""
    revision: str = ""
    network: str = ""
    date_tag: str = ""
    caps: BuilderCaps = field(default_factory=BuilderCaps)
    resolve_options: ResolveOptions = field(default_factory=ResolveOptions)
    source_timeout: float = 60.0  # seconds a git remote may stay silent (source_timeout)


@dataclass
class Node:
    name: str
    kind: str
    parent: str | None
    level: int
    target: str | None = None
    template: str | None = None
    args: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    hash: str = ""
    image: str = ""
    status: str = ""
    reason: str = ""
    digest: str = ""
    # a skipped node: "failure" (an input could not be had: the run fails, naming it) or
    # "intent" (left out on purpose: a note)
    kind_of_skip: str = ""
    driver_floor: str | None = None  # base-<target>: the matrix row's min_driver (None: cpu)
    torch_family: dict[str, str] = field(default_factory=dict)  # base-<target>: name -> version

    @property
    def hash_tag(self) -> str:
        return f"{self.name}-{short(self.hash)}" if self.hash else ""

    @property
    def ref(self) -> str:
        if self.kind == "os-base":  # an input: the reference it was resolved to (BLD-1)
            return self.image
        return f"{self.image}:{self.hash_tag}"

    def release_tags(self, date_tag: str = "") -> list[str]:
        """Tags moved after verification: template images only (bases keep their hash tag)."""
        if self.kind != "template":
            return []
        tags = [self.name]
        if date_tag:
            tags.append(f"{self.name}-{date_tag}")
        return tags

    def as_dict(self, date_tag: str = "") -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(hash_tag=self.hash_tag, ref=self.ref, release_tags=self.release_tags(date_tag))
        return out


@dataclass
class Plan:
    nodes: list[Node]
    bake: dict[str, Any]
    skipped: list[dict[str, str]]
    notes: list[str] = field(default_factory=list)  # what people should know; not refusals

    def by_name(self) -> dict[str, Node]:
        return {node.name: node for node in self.nodes}

    @property
    def stale(self) -> list[Node]:
        return [n for n in self.nodes if n.status == "stale"]


# ---------------------------------------------------------------------------------------------
# Rendering


def _environment(repo_root: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(repo_root / "roles" / "image_build" / "templates")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["quote"] = lambda value: shlex.quote(str(value))
    return env


def _write(path: Path, data: str | bytes) -> None:
    """Write only when the content differs, so untouched files keep their mtime."""
    raw = data.encode() if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == raw:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)


def _sync_tree(src: Path, dest: Path) -> None:
    """Make ``dest`` hold exactly ``src``'s files (content-compared, extra files removed)."""
    wanted = set()
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and not any(part in ("__pycache__",) for part in rel.parts):
            wanted.add(rel)
            _write(dest / rel, path.read_bytes())
            os.chmod(dest / rel, 0o755 if os.access(path, os.X_OK) else 0o644)
    if dest.exists():
        for path in sorted(dest.rglob("*"), reverse=True):
            rel = path.relative_to(dest)
            if path.is_file() and rel not in wanted:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def _reset(context: Path, keep: Sequence[str]) -> None:
    """Remove whatever a context holds beyond ``keep`` (top-level names)."""
    if context.exists():
        for child in context.iterdir():
            if child.name not in keep:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    context.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------
# Package layers of a target


def _torch_specs(family: TorchFamily) -> list[str]:
    """The torch layer: the whole family (torch, torchvision, torchaudio, torch_extra), pinned."""
    return family.specs()


def _resolve_options(target: GpuTarget, base: ResolveOptions) -> ResolveOptions:
    if target.torch_wheelhouse:
        return dataclasses.replace(base, find_links=(*base.find_links, target.torch_wheelhouse))
    if target.torch_index_url:
        return dataclasses.replace(
            base, extra_index_urls=(*base.extra_index_urls, target.torch_index_url)
        )
    return base


def local_path(url: str) -> str | None:
    """The file a ``file://`` URL of pip's report names (percent-decoded: ``+cpu`` is %2B)."""
    if not url.startswith("file://"):
        return None
    return urllib.parse.unquote(urllib.parse.urlparse(url).path)


def _with_local_hashes(layers: list[Layer]) -> list[Layer]:
    """Wheels found through a local wheelhouse carry no index hash: hash the file itself."""
    out = []
    for layer in layers:
        dists = []
        for dist in layer.dists:
            path = local_path(dist.url)
            if dist.sha256 is None and path:
                dist = dataclasses.replace(dist, sha256=file_sha256(path))
            dists.append(dist)
        out.append(dataclasses.replace(layer, dists=tuple(dists)))
    return out


def _report_requires(settings: Settings, resolution: Any) -> dict[str, tuple[str, ...]]:
    """Requires-Dist of each resolved distribution, from the cached pip report (formats.md:
    ``resolution-<key>.json`` holds ``{"inputs", "report"}``); empty when there is none."""
    path = settings.cache_dir / "resolutions" / f"resolution-{resolution.key}.json"
    try:
        return requires_from_report(json.loads(path.read_text("utf-8"))["report"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


class PlanProblems(PlanError):
    """Every problem the plan found, reported at once (one a line); ``original`` is the
    exception itself where there was only one."""

    def __init__(self, problems: Sequence[str], original: Exception | None = None) -> None:
        self.problems = list(problems)
        self.original = original
        count = len(self.problems)
        head = "" if count == 1 else f"the plan has {count} problems:\n"
        super().__init__(head + "\n".join(f"- {p}" if count > 1 else p for p in self.problems))


def _override_problems(config: Config, family: TorchFamily) -> list[str]:
    """package_layers_exclude/_replace must leave the family whole (it is pinned everywhere)."""
    replace = config.replace_map
    problems = []
    for name in family.names:
        key = (
            "package_layers_exclude"
            if name in config.package_layers_exclude
            else "package_layers_replace"
            if name in replace
            else ""
        )
        if key:
            problems.append(
                f"{key} names {name}, a member of gpu_targets.{family.target}'s torch family "
                f"({', '.join(family.specs())}). Fix: drop {name} from {key}; to leave a member "
                f"out set gpu_targets.{family.target}.{name}: none (torchvision, torchaudio) "
                "or remove it from torch_extra"
            )
    return problems


def layer_labels(config: Config, target: GpuTarget, template: Template | None = None) -> dict:
    """Layer name -> where people configure it, for messages."""
    labels = {
        "torch": f"gpu_targets.{target.name} (its torch family)",
        "comfyui": "ComfyUI's requirements (comfyui.ref)",
    }
    for index, layer in enumerate(config.package_layers):
        labels[layer.name] = f"package_layers[{index}] ({layer.name})"
    if template is not None:
        labels[template_layer_name(template)] = f"{template.path}/template.yml extra_packages"
    return labels


def template_layer_name(template: Template) -> str:
    return f"template-{template.name}"


def _without(
    layer_specs: Sequence[tuple[str, Sequence[str]]], exclude: Sequence[str], replace: Any
) -> list[tuple[str, list[str]]]:
    """The layers without the specs an exclusion or replacement removes (already reported),
    so the checks after the resolver still run in the same round."""
    removed = set(exclude) | set(replace)
    return [
        (name, [s for s in specs if canonicalize_name(Requirement(s).name) not in removed])
        for name, specs in layer_specs
    ]


def _collisions(
    settings: Settings,
    resolution: Resolution,
    layer_specs: Sequence[tuple[str, Sequence[str]]],
    labels: Mapping[str, str],
    records_from: Sequence[ResolvedDist] = (),
) -> list[str]:
    """Distributions of ``resolution`` (and ``records_from``: a parent's) that write the same
    files, each with the line of configuration that settles it."""
    dists = {d.name: d for d in (*records_from, *resolution.dists)}
    records = dist_records(
        dists.values(),
        settings.cache_dir / "records",
        settings.resolve_options.cert,
        settings.source_timeout,
    )
    collisions = find_collisions(records)
    return collision_problems(collisions, resolution, layer_specs, records, labels)


def target_layers(
    config: Config,
    target: GpuTarget,
    settings: Settings,
    comfy_specs: list[str],
    extra: tuple[str, Sequence[str]] | None = None,
    family: TorchFamily | None = None,
) -> list[Layer]:
    """Resolve the torch family, ComfyUI's requirements and the configured layers once; assign
    them. The family (``torch_family.family_for``; without it, what the target names) is
    the torch layer and the resolution's constraints; a resolution that mixes the family's
    build variants raises ``torch_family.MixedFamily`` before anything is built.

    Every problem is collected and raised at once (``PlanProblems``): those found before the
    resolver (overrides that contradict a spec or the family) and those after it (files
    written twice, a mixed family)."""
    family = family or from_target(target)
    problems = _override_problems(config, family)
    layer_specs: list[tuple[str, Sequence[str]]] = [("torch", _torch_specs(family))]
    if comfy_specs:
        layer_specs.append(("comfyui", comfy_specs))
    layer_specs += [(layer.name, layer.specs) for layer in config.package_layers]
    if extra and extra[1]:
        layer_specs.append(extra)
    # a family member named by an override is reported above; the rest of the checks run
    # without that override
    replace = {k: v for k, v in config.replace_map.items() if k not in family.names}
    exclude = tuple(n for n in config.package_layers_exclude if n not in family.names)
    labels = layer_labels(config, target)
    conflicts = override_conflicts(layer_specs, exclude, replace, labels)
    problems += conflicts
    if conflicts:
        layer_specs = _without(layer_specs, exclude, replace)
    resolution = resolve(
        layer_specs,
        settings.python_version,
        settings.platform,
        constraints=family.constraint_lines(),
        options=_resolve_options(target, settings.resolve_options),
        cache_dir=settings.cache_dir / "resolutions",
        extra_specs=sorted(set(replace.values())),
    )
    resolution = apply_overrides(resolution, layer_specs, exclude, replace, labels)
    original: Exception | None = None
    try:
        check_resolution(family, resolution, _report_requires(settings, resolution))
    except IncompatibleTarget as err:
        problems.append(str(err))
        original = err
    layers = _with_local_hashes(assign_layers(layer_specs, resolution, labels=labels))
    resolution = dataclasses.replace(
        resolution, dists=tuple(d for layer in layers for d in layer.dists)
    )
    problems += _collisions(settings, resolution, layer_specs, labels)
    if problems:
        raise PlanProblems(problems, original if len(problems) == 1 else None)
    return layers


def _base_pin_conflicts(
    specs: Sequence[str], base: Mapping[str, ResolvedDist], where: str, base_name: str
) -> list[str]:
    """Specs whose version range leaves out what a base layer pins (checked before pip)."""
    problems = []
    for j, spec in enumerate(specs):
        req = Requirement(spec)
        pinned = base.get(canonicalize_name(req.name))
        if pinned is not None and not req.specifier.contains(pinned.version, prereleases=True):
            problems.append(
                f"{where}[{j}]: {spec!r} conflicts with {base_name}'s pin {pinned.pin} (every "
                f"later install is held to base-<gpu>'s versions). Fix: allow {pinned.version} "
                f"in {spec!r}, or move the pin in the layer that installs {pinned.name}"
            )
    return problems


def template_layer(
    config: Config,
    target: GpuTarget,
    settings: Settings,
    template: Template,
    base_layers: Sequence[Layer],
    family: TorchFamily | None = None,
) -> Layer | None:
    """The template's own package layer (``extra_packages``): resolved with every base layer's
    pin as a constraint (so base-<gpu>, shared by every template, never moves), given what
    base-<gpu> does not install, locked with hashes. ``PlanProblems`` names each spec that
    conflicts with a base pin or an override, and each file written twice."""
    specs = list(template.extra_packages)
    if not specs:
        return None
    family = family or from_target(target)
    name = template_layer_name(template)
    labels = layer_labels(config, target, template)
    where = f"{template.path}/template.yml extra_packages"
    base = {d.name: d for layer in base_layers for d in layer.dists}
    replace = {k: v for k, v in config.replace_map.items() if k not in family.names}
    exclude = tuple(n for n in config.package_layers_exclude if n not in family.names)
    layer_specs: list[tuple[str, Sequence[str]]] = [(name, specs)]
    problems = override_conflicts(layer_specs, exclude, replace, labels)
    problems += _base_pin_conflicts(specs, base, where, f"base-{target.name}")
    if problems:
        raise PlanProblems(problems)
    constraints = [f"{d.name}=={d.version}" for d in base.values()]
    try:
        resolution = resolve(
            layer_specs,
            settings.python_version,
            settings.platform,
            constraints=sorted(set(constraints) | set(family.constraint_lines())),
            options=_resolve_options(target, settings.resolve_options),
            cache_dir=settings.cache_dir / "resolutions",
            extra_specs=sorted(v for v in set(replace.values()) if v not in base),
        )
    except ResolveError as err:
        if err.pip_output and "conflict" in err.pip_output.lower():
            raise PlanProblems(
                [f"{where}: {specs} cannot be installed beside base-{target.name}'s pins: {err}"]
            ) from err
        raise
    resolution = apply_overrides(resolution, layer_specs, exclude, replace, labels)
    new = tuple(d for d in resolution.dists if d.name not in base)
    sdists = [d.pin for d in new if d.build]
    if sdists:
        problems.append(
            f"{where}: {', '.join(sdists)} has no wheel for the target (an sdist); the template's "
            "layer installs wheels only. Fix: move it to a package_layers layer (base-<gpu> "
            "builds sdists)"
        )
    (layer,) = _with_local_hashes([Layer(name=name, dists=new)])
    mine = dataclasses.replace(resolution, dists=layer.dists)
    problems += [
        p
        for p in _collisions(settings, mine, layer_specs, labels, records_from=tuple(base.values()))
    ]
    if problems:
        raise PlanProblems(problems)
    return layer


def _for_target(target: str, problem: str) -> str:
    return problem if problem.startswith(f"{target}: ") else f"{target}: {problem}"


def empty_layer_notes(target: str, layers: Sequence[Layer], labels: Mapping[str, str]) -> list:
    """A layer whose every distribution came in an earlier one builds no stage: say so."""
    notes = []
    for index, layer in enumerate(layers):
        if layer.dists or layer.name == "torch":
            continue
        earlier = ", ".join(item.name for item in layers[:index] if item.dists)
        notes.append(
            f"{target}: {labels.get(layer.name, layer.name)} is empty: every distribution it "
            f"needs is installed by an earlier layer ({earlier}); it builds no stage"
        )
    return notes


def _cuda_sizes(layers: Sequence[Layer]) -> dict[str, int]:
    """Sizes of the nvidia-*/cuda-* wheels that lie in a local wheelhouse (pip's report
    gives no size for an index's files)."""
    sizes = {}
    for layer in layers:
        for dist in layer.dists:
            path = local_path(dist.url)
            if dist.name.startswith(CUDA_PREFIXES) and path and os.path.isfile(path):
                sizes[dist.name] = os.path.getsize(path)
    return sizes


def _link(source: Path, dest: Path) -> None:
    """Hard-link (else copy) ``source`` to ``dest`` unless the same bytes are already there."""
    if dest.exists():
        if filecmp.cmp(source, dest, shallow=False):
            return
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _prune(folder: Path, keep: set[Path]) -> None:
    """Remove every file under ``folder`` not in ``keep``, then the folders left empty."""
    if not folder.exists():
        return
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def _layer_file(index: int, layer: Layer) -> str:
    return f"{index:02d}-{layer.name}.txt"


# ---------------------------------------------------------------------------------------------
# Contexts of each kind


@dataclass(frozen=True)
class ManagerPlan:
    """How base-common gets ComfyUI-Manager: ``manager.mode`` decided against the pinned
    ComfyUI (``manager_plan``)."""

    mode: str  # package | git
    specs: tuple[str, ...] = ()  # package: the lines of ComfyUI's manager_requirements.txt
    repo: str = ""  # git: manager.repo
    commit: str = ""  # git: manager.ref, a full commit


def manager_plan(config: Config, settings: Settings) -> ManagerPlan:
    """``package`` where the pinned ComfyUI ships ``manager_requirements.txt`` (ComfyUI >= 0.4
    installs Manager as the ``comfyui-manager`` package and starts it with
    ``--enable-manager``; a clone in ``custom_nodes`` is skipped there), else ``git``.
    ``manager.mode: package|git`` forces one; PlanError when the pinned commits cannot serve
    it, SourceUnreachable when ComfyUI cannot be fetched."""
    commit = require_commit(config.comfyui.ref, "comfyui.ref")
    mode = config.manager.mode
    text = None
    if mode != "git":
        text = read_file(
            settings.cache_dir,
            config.comfyui.repo,
            commit,
            MANAGER_REQUIREMENTS,
            "comfyui.repo",
            settings.source_timeout,
        )
    if text is not None:
        specs = requirement_lines(text)
        if not specs:
            raise PlanError(
                f"comfyui.ref: ComfyUI's {MANAGER_REQUIREMENTS} at {commit} names no package. "
                "Fix: pin comfyui.ref to a commit whose file names comfyui-manager, or set "
                "manager.mode: git with manager.repo and manager.ref"
            )
        return ManagerPlan("package", specs=tuple(specs))
    if mode == "package":
        raise PlanError(
            f"manager.mode: package, but ComfyUI at {commit} (comfyui.ref) has no "
            f"{MANAGER_REQUIREMENTS} (it predates the comfyui-manager package). Fix: set "
            "manager.mode: auto or git with manager.repo and manager.ref, or move comfyui.ref "
            "to a commit that ships the file"
        )
    if not (config.manager.repo and config.manager.ref):
        raise PlanError(
            f"manager.repo: ComfyUI at {commit} (comfyui.ref) has no {MANAGER_REQUIREMENTS}, "
            "so Manager is a git clone, and manager.repo/manager.ref are not set. Fix: set "
            "manager.repo and manager.ref (a full commit), or move comfyui.ref to a commit "
            "that ships the file"
        )
    return ManagerPlan(
        "git", repo=config.manager.repo, commit=require_commit(config.manager.ref, "manager.ref")
    )


def render_base_common(
    env: jinja2.Environment,
    context: Path,
    config: Config,
    settings: Settings,
    manager: ManagerPlan,
) -> dict[str, str]:
    _reset(context, keep=("Dockerfile", "runtime", "manager-config.ini", "manager.json"))
    # The runtime scripts, and beside them the one manifest parser the plan uses too.
    sources = {
        path.name: path
        for path in sorted((settings.repo_root / "runtime").iterdir())
        if path.is_file() and path.suffix in (".py", ".sh")
    }
    sources["manifests.py"] = settings.repo_root / "module_utils" / "manifests.py"
    runtime = context / "runtime"
    for name, path in sources.items():
        _write(runtime / name, path.read_bytes())
        os.chmod(runtime / name, 0o755)
    for stale in runtime.iterdir():
        if stale.name not in sources:
            stale.unlink()
    # Both modes: start.sh puts it where that Manager reads it (aiclipse_config.py
    # manager-config), never below this level.
    _write(
        context / "manager-config.ini",
        f"[default]\nsecurity_level = {config.manager.security_level}\n"
        "network_mode = public\nfile_logging = False\n",
    )
    # What the verification expects of Manager (module_utils/expectations.py); not copied
    # into the image.
    _write(
        context / "manager.json",
        json.dumps(
            {"mode": manager.mode, "specs": list(manager.specs), "commit": manager.commit},
            sort_keys=True,
        )
        + "\n",
    )
    _write(
        context / "Dockerfile",
        env.get_template("Dockerfile.base-common.j2").render(
            apt_packages=APT_PACKAGES,
            user=settings.user,
            uid=settings.uid,
            gid=settings.gid,
            jupyter_spec=settings.jupyter_spec,
            filebrowser_url=settings.filebrowser_url,
            filebrowser_sha256=settings.filebrowser_sha256,
            manager_mode=manager.mode,
            manager_specs=list(manager.specs),
        ),
    )
    args = {
        "COMFYUI_REPO": config.comfyui.repo,
        "COMFYUI_COMMIT": require_commit(config.comfyui.ref, "comfyui.ref"),
        "MANAGER_MODE": manager.mode,
    }
    if manager.mode == "git":
        args.update(MANAGER_REPO=manager.repo, MANAGER_COMMIT=manager.commit)
    return args


def render_base_gpu(
    env: jinja2.Environment,
    context: Path,
    target: GpuTarget,
    layers: list[Layer],
    settings: Settings,
    overrides: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    _reset(
        context,
        keep=("Dockerfile", "layers", "wheels", "sdists", "constraints.txt", "overrides.json"),
    )
    files = {}
    for index, layer in enumerate(layers, start=1):
        wheels_only = dataclasses.replace(layer, dists=tuple(d for d in layer.dists if not d.build))
        if wheels_only.dists:  # a layer whose distributions all came earlier is empty: no stage
            files[_layer_file(index, layer)] = wheels_only.requirements_text(hashes=True)
    for name, text in files.items():
        _write(context / "layers" / name, text)
    for stale in (context / "layers").iterdir():
        if stale.name not in files:
            stale.unlink()
    _write(context / "constraints.txt", constraints_text(layers))
    # package_layers_exclude/_replace, for the nodes' requirements too (install_nodes.py)
    _write(
        context / "overrides.json",
        json.dumps(overrides or {"exclude": [], "replace": {}}, indent=1, sort_keys=True) + "\n",
    )
    # Each layer's stage mounts only its own requirements file and wheels: BuildKit keys a
    # RUN on the content of what it mounts, so a change to one layer re-runs only its stage.
    info, kept = [], set()
    builds = []
    for index, layer in enumerate(layers, start=1):
        if not layer.dists:
            continue
        stem = _layer_file(index, layer).removesuffix(".txt")
        wheel_dists = [d for d in layer.dists if not d.build]
        wheels = sorted(path for dist in wheel_dists if (path := local_path(dist.url)))
        for wheel in wheels:
            dest = context / "wheels" / stem / Path(wheel).name
            kept.add(dest)
            _link(Path(wheel), dest)
        options = ["--find-links /ctx/wheels"] if wheels else []
        if wheels and len(wheels) == len(wheel_dists):
            options.append("--no-index")  # every wheel is in the context: no index to ask
        if target.torch_index_url and len(wheels) < len(wheel_dists):
            options.append(f"--extra-index-url {shlex.quote(target.torch_index_url)}")
        layer_builds = [_sdist_build(context, dist, kept) for dist in layer.dists if dist.build]
        builds += layer_builds
        info.append(
            {
                "name": layer.name,
                "file": f"{stem}.txt" if wheel_dists else "",
                "count": len(layer.dists),
                "wheels": stem if wheels else "",
                "index_options": " ".join(options),
                "sdists": [item["pin"] for item in layer_builds],
                "builds": [item["stage"] for item in layer_builds],
            }
        )
    _prune(context / "wheels", kept)
    _prune(context / "sdists", kept)
    _write(
        context / "Dockerfile",
        env.get_template("Dockerfile.base-gpu.j2").render(
            gpu=target.name,
            layers=info,
            sdists=builds,
            sdist_toolchain=SDIST_TOOLCHAIN,
            copy_link=settings.caps.copy_link,
            arch_list=target.torch_cuda_arch_list,
        ),
    )
    pins = {layer.name: [d.pin for d in layer.dists] for layer in layers}
    return [
        {k: v for k, v in {**item, "pins": pins[item["name"]]}.items() if k != "builds"}
        for item in info
    ]


# The compilers an sdist build stage gets (never the image: only the built wheel leaves it).
SDIST_TOOLCHAIN = ("build-essential", "python3-dev", "cmake", "pkg-config")


def _sdist_build(context: Path, dist: ResolvedDist, kept: set[Path]) -> dict[str, str]:
    """The build stage of one sdist: its pinned, hashed requirement file (and the sdist itself
    where it lies in a local wheelhouse) under ``sdists/``."""
    stem = f"{dist.name}-{dist.version}"
    text = (
        "# build: sdist (no wheel for the target; built in base-<gpu>'s sdist stage)\n"
        f"{dist.pin} --hash=sha256:{dist.sha256}\n"
    )
    requirement = context / "sdists" / f"{stem}.txt"
    _write(requirement, text)
    kept.add(requirement)
    local = local_path(dist.url)
    options = ""
    if local:
        dest = context / "sdists" / stem / Path(local).name
        _link(Path(local), dest)
        kept.add(dest)
        options = "--no-index --find-links /ctx/src"
    return {
        "name": dist.name,
        "pin": dist.pin,
        "stage": target_id(stem).lower(),
        "file": f"{stem}.txt",
        "src": stem if local else "",
        "index_options": options,
    }


def render_template(
    env: jinja2.Environment,
    context: Path,
    template: Template,
    target: GpuTarget,
    own: Layer | None = None,
) -> list[dict[str, Any]]:
    """The template image's context; ``own``: its package layer (``extra_packages``), whose
    pinned, hashed list (and local wheels) the context holds, so the node's hash covers it."""
    _reset(
        context,
        keep=("Dockerfile", "manifests", "workflows", "nodes_manifest.txt", "layers", "wheels"),
    )
    src = Path(template.path)
    locked = template.locked_nodes()
    _write(
        context / "nodes_manifest.txt",
        "".join(f"{item.url}@{item.commit}\n" for item in locked),
    )
    _write(
        context / "manifests" / "models_manifest.txt",
        (src / "models_manifest.txt").read_bytes(),
    )
    _write(context / "manifests" / "nodes_manifest.txt", (src / "nodes_manifest.txt").read_bytes())
    _sync_tree(src / "workflows", context / "workflows")
    (context / "workflows").mkdir(exist_ok=True)
    info: list[dict[str, Any]] = []
    kept: set[Path] = set()
    extra = None
    if own is not None and own.dists:
        requirements = context / "layers" / "template.txt"
        _write(requirements, own.requirements_text(hashes=True))
        kept.add(requirements)
        wheels = sorted(path for dist in own.dists if (path := local_path(dist.url)))
        for wheel in wheels:
            dest = context / "wheels" / Path(wheel).name
            kept.add(dest)
            _link(Path(wheel), dest)
        options = ["--find-links /ctx/wheels"] if wheels else []
        if wheels and len(wheels) == len(own.dists):
            options.append("--no-index")
        if target.torch_index_url and len(wheels) < len(own.dists):
            options.append(f"--extra-index-url {shlex.quote(target.torch_index_url)}")
        extra = {
            "name": own.name,
            "file": "template.txt",
            "count": len(own.dists),
            "wheels": "wheels" if wheels else "",
            "index_options": " ".join(options),
        }
        info.append({**extra, "pins": list(own.pins)})
    _prune(context / "layers", kept)
    _prune(context / "wheels", kept)
    _write(
        context / "Dockerfile",
        env.get_template("Dockerfile.template.j2").render(
            template=template.name,
            gpu=target.name,
            fragment=template.fragment or "",
            nodes=len(locked),
            comfy_args=template.comfy_args,
            extra_layer=extra,
        ),
    )
    return info


# ---------------------------------------------------------------------------------------------
# The plan


def _files(context: Path) -> dict[str, str]:
    return {rel: detail for _, rel, detail in tree_entries(context, EXCLUDE) if detail}


def _reason(node: Node, previous: Mapping[str, Any] | None, parents: Mapping[str, Node]) -> str:
    if previous is None:
        return "not in the registry"
    old = previous.get(node.name)
    if old is None:
        return "new node"
    changes = []
    parent = parents.get(node.parent or "")
    if parent is not None and parent.hash != old.get("parent_hash"):
        changes.append(f"parent {parent.name} changed")
    old_files = old.get("files", {})
    for rel in sorted(set(old_files) | set(node.files)):
        if old_files.get(rel) != node.files.get(rel):
            verb = "added" if rel not in old_files else "removed" if rel not in node.files else ""
            changes.append(f"{rel} {verb or 'changed'}")
    old_args = old.get("args", {})
    for key in sorted(set(old_args) | set(node.args)):
        if old_args.get(key) != node.args.get(key):
            changes.append(f"build arg {key} changed")
    return "; ".join(changes) if changes else "not in the registry (inputs unchanged)"


def make_plan(
    config: Config,
    templates: Sequence[Template],
    settings: Settings,
    lookup: Callable[[str], str | None],
    requested_target: str | None = None,
    previous: Mapping[str, Any] | None = None,
    comfy_requirements: Callable[[], list[str]] | None = None,
) -> Plan:
    """Render, hash and classify every node the templates need; write the bake file."""
    env = _environment(settings.repo_root)
    matrix = config_matrix(config, settings.repo_root)
    build = settings.build_dir
    names = [t.name for t in config.gpu_targets]
    wanted: dict[str, list[Template]] = {}
    for template in templates:
        for target_name in select_targets(template, names, requested_target):
            wanted.setdefault(target_name, []).append(template)
    families: dict[str, TorchFamily] = {}
    for target_name in wanted:
        validate_target(config.target(target_name), matrix)
        families[target_name] = family_for(config.target(target_name), matrix)
    notes: list[str] = []
    problems: list[str] = []  # every refusal of the plan, reported at once at its end
    originals: list[Exception | None] = []

    os_base = Node(
        "os-base", "os-base", None, 0, hash=node_hash({"ref": settings.os_base_ref}, None)
    )
    os_base.image, os_base.status = settings.os_base_ref, "external"
    nodes: list[Node] = [os_base]
    by_name = {"os-base": os_base}
    if not wanted:
        return Plan(
            nodes=[], bake={"group": {"default": {"targets": []}}, "target": {}}, skipped=[]
        )

    image = f"{config.registry}/{IMAGE}"
    common = Node("base-common", "base-common", "os-base", 1, image=image)
    nodes.append(common)
    by_name[common.name] = common
    try:
        manager = manager_plan(config, settings)
        comfy_specs = (
            comfy_requirements() if comfy_requirements else _comfy_specs(config, settings, manager)
        )
        common.args = render_base_common(env, build / common.name, config, settings, manager)
    except SourceUnreachable as err:
        common.status, common.reason = "skipped", str(err)
        comfy_specs = []
    comfy_specs, family_lines = split_family_lines(comfy_specs)
    if family_lines:
        notes.append(
            f"ComfyUI's requirements list {', '.join(family_lines)}: not resolved from there; "
            "each target's torch family provides them (the torch layer, pinned for every later "
            "install)"
        )

    for target_name in sorted(wanted):
        target = config.target(target_name)
        family = families[target_name]
        base_layers: list[Layer] = []
        base = Node(f"base-{target.name}", "base-gpu", "base-common", 2, target=target.name)
        base.image = image
        row = matrix.row(target.cuda, target.torch)
        base.driver_floor = row.min_driver if row else None
        nodes.append(base)
        by_name[base.name] = base
        if common.status == "skipped":
            base.status, base.reason = "skipped", "base-common skipped"
        else:
            try:
                layers = target_layers(config, target, settings, comfy_specs, family=family)
                base_layers = layers
                base.torch_family = family_pins(family, layers)
                notes += family_notes(target, family, layers, _cuda_sizes(layers))
                notes += dropped_line_notes(family, family_lines, base.torch_family)
                notes += empty_layer_notes(target.name, layers, layer_labels(config, target))
                overrides = {
                    "exclude": sorted(config.package_layers_exclude),
                    "replace": dict(sorted(config.replace_map.items())),
                }
                base.layers = render_base_gpu(
                    env, build / base.name, target, layers, settings, overrides
                )
            except ResolveError as err:
                base.status, base.reason = "skipped", f"package layers: {err}"
            except PlanProblems as err:
                problems += [_for_target(target.name, p) for p in err.problems]
                originals.append(err.original)
                base.status, base.reason = "skipped", "refused (see the plan's problems)"
        for template in wanted[target_name]:
            node = Node(
                f"{template.name}-{target.name}",
                "template",
                base.name,
                3,
                target=target.name,
                template=template.name,
                image=image,
                labels=template.label_map,
            )
            nodes.append(node)
            by_name[node.name] = node
            if base.status == "skipped":
                node.status, node.reason = "skipped", f"{base.name} skipped"
                continue
            try:
                own = template_layer(config, target, settings, template, base_layers, family)
            except ResolveError as err:
                node.status, node.reason = "skipped", f"extra_packages: {err}"
                continue
            except PlanProblems as err:
                problems += [_for_target(target.name, p) for p in err.problems]
                originals.append(err.original)
                node.status, node.reason = "skipped", "refused (see the plan's problems)"
                continue
            node.layers = render_template(env, build / node.name, template, target, own)

    if problems:
        if len(problems) == 1 and originals and originals[0] is not None:
            raise originals[0]
        raise PlanProblems(problems)
    for node in nodes[1:]:
        if node.status == "skipped":
            continue
        node.files = _files(build / node.name)
        parent = by_name[node.parent or ""]
        node.hash = node_hash({"files": node.files, "args": node.args}, parent.hash)
        digest = lookup(node.ref)
        if digest:
            node.status, node.digest = "cached", digest
        else:
            node.status = "stale"
            node.reason = _reason(node, previous, by_name)
    for node in nodes:  # every skip above is for an input the plan could not have
        if node.status == "skipped" and not node.kind_of_skip:
            node.kind_of_skip = "failure"
    skipped = [
        {"node": n.name, "reason": n.reason, "kind_of_skip": n.kind_of_skip}
        for n in nodes
        if n.status == "skipped"
    ]
    plan = Plan(nodes=nodes, bake={}, skipped=skipped, notes=notes)
    plan.bake = bake_file(plan, settings)
    return plan


def _comfy_specs(
    config: Config, settings: Settings, manager: ManagerPlan | None = None
) -> list[str]:
    cache = settings.cache_dir
    comfy = read_file(
        cache,
        config.comfyui.repo,
        require_commit(config.comfyui.ref, "comfyui.ref"),
        "requirements.txt",
        "comfyui.repo",
        settings.source_timeout,
    )
    manager = manager or manager_plan(config, settings)
    # Manager's requirements join ComfyUI's in the one resolution (the comfyui layer): package
    # mode's comfyui-manager spec (locked with its dependencies, hashed, installed --no-deps
    # with ComfyUI's own) or the git clone's requirements.txt.
    manager_lines = list(manager.specs)
    if manager.mode == "git":
        where, timeout = "manager.repo", settings.source_timeout
        text = read_file(cache, manager.repo, manager.commit, "requirements.txt", where, timeout)
        manager_lines = requirement_lines(text)
    specs: list[str] = []
    # every line, torch's family included: make_plan sets the family's lines aside and says
    # so in the plan's notes (torch_family.split_family_lines): the torch layer provides them
    for spec in requirement_lines(comfy) + manager_lines:
        if spec not in specs:
            specs.append(spec)
    return specs


# ---------------------------------------------------------------------------------------------
# The bake file


def target_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def bake_file(plan: Plan, settings: Settings) -> dict[str, Any]:
    """A buildx bake definition (JSON) for the stale nodes only.

    Parents are referenced by their hash tag through the ``PARENT`` build arg. Where the
    builder supports named contexts (BuildKit >= 0.10), a stale parent is linked with
    ``contexts`` so one bake builds the chain; otherwise ``level<N>`` groups let the caller
    build level by level (BuildKit 0.8 on Debian 12's docker.io).
    """
    by_name = plan.by_name()
    targets: dict[str, Any] = {}
    groups: dict[str, list[str]] = {}
    caps = settings.caps
    for node in plan.stale:
        parent = by_name[node.parent or ""]
        parent_ref = settings.os_base_ref if parent.kind == "os-base" else parent.ref
        spec: dict[str, Any] = {
            "context": str(settings.build_dir / node.name),
            "dockerfile": "Dockerfile",
            "args": {"PARENT": parent_ref, **node.args},
            "tags": [node.ref],
            "labels": {
                "io.aiclipse.node": node.name,
                "io.aiclipse.node-hash": node.hash,
                "org.opencontainers.image.source": settings.source,
                "org.opencontainers.image.revision": settings.revision,
            },
            "secret": [f"id=ca,src={settings.ca_bundle}"],
        }
        if node.kind == "template":
            spec["labels"]["org.opencontainers.image.title"] = node.name
            spec["labels"].update(node.labels)
        if settings.network:
            spec["network"] = settings.network
        if caps.named_contexts and parent.status == "stale":
            spec["contexts"] = {parent_ref: f"target:{target_id(parent.name)}"}
        cache_ref = f"{node.image}:cache-{node.name}"
        if caps.load:  # a container builder keeps its results unless told to load them
            spec["output"] = ["type=docker"]
        if "registry" in caps.cache_export:
            spec["cache-from"] = [f"type=registry,ref={cache_ref}"]
            spec["cache-to"] = [f"type=registry,ref={cache_ref},mode=max"]
        else:
            spec["cache-to"] = ["type=inline"]
        targets[target_id(node.name)] = spec
        groups.setdefault(f"level{node.level}", []).append(target_id(node.name))
    group = {name: {"targets": ids} for name, ids in sorted(groups.items())}
    group["default"] = {"targets": list(targets)}
    return {"group": group, "target": targets}


def plan_json(plan: Plan, settings: Settings) -> dict[str, Any]:
    nodes = []
    by_name = plan.by_name()
    for node in plan.nodes:
        item = node.as_dict(settings.date_tag)
        parent = by_name.get(node.parent or "")
        item["parent_hash"] = parent.hash if parent else None
        nodes.append(item)
    return {"nodes": nodes, "skipped": plan.skipped, "notes": plan.notes}


def write_outputs(plan: Plan, settings: Settings) -> tuple[Path, Path]:
    """plan.json and bake.json in the build folder (written only when they change)."""
    plan_path = settings.build_dir / "plan.json"
    bake_path = settings.build_dir / "bake.json"
    _write(plan_path, json.dumps(plan_json(plan, settings), indent=2, sort_keys=True) + "\n")
    _write(bake_path, json.dumps(plan.bake, indent=2, sort_keys=True) + "\n")
    return plan_path, bake_path


def load_previous(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return {item["name"]: item for item in data.get("nodes", [])}


def plan_table(plan: Plan) -> str:
    """One line per node: status, name, hash tag and why it is stale."""
    rows = [("STATUS", "NODE", "TAG", "LAYERS", "WHY")]
    for node in plan.nodes:
        if node.kind == "os-base":
            continue
        layers = ", ".join(f"{item['name']}({item['count']})" for item in node.layers) or "-"
        rows.append((node.status, node.name, node.hash_tag or "-", layers, node.reason or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    ]
    return "\n".join(lines + [f"NOTE: {note}" for note in plan.notes])
