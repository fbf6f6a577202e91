"""The torch family of a target as one unit: torch, torchvision, torchaudio and named extras.

torchvision and torchaudio are compiled against one torch build: PyPI's torchvision 0.28.0
(a CUDA build, no ``+cpu`` label) beside ``torch 2.13.0+cpu`` fails at start with
``operator torchvision::nms does not exist``. So:

1. ``family_for`` fills a target's torchvision/torchaudio from the matrix's ``families`` data
   when the target leaves them out, and refuses an explicit version the data does not pair
   with the target's torch (``gpu_targets.<t>.torchvision``); ``none`` leaves a member out.
2. ``TorchFamily.specs()`` are the torch layer's specs; ``constraint_lines()`` the pip
   constraints of the resolution. Every member lands in the torch layer, so the constraints
   file (``package_layers.constraints_text``) pins the whole family for every later install.
3. ``check_resolution`` refuses, after the resolution and before anything is built, a family
   whose members carry different build variants (the local label: ``+cpu``, ``+cu128``, none
   = the index's default build), naming the distribution that pulled the odd one, and any
   resolved distribution whose Requires-Dist pins torch to another build than the target's.
4. ``family_notes`` says what the plan shows: a target without torchaudio (ComfyUI's audio
   nodes will not load), a cpu target given a CUDA build of torch (with the size it adds).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ansible.module_utils.config import NO_MEMBER, GpuTarget
from ansible.module_utils.gpu_matrix import EXTRA_VAR, MATRIX_VAR, IncompatibleTarget, Matrix
from ansible.module_utils.package_layers import Layer, Resolution, ResolvedDist
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

FAMILY_NAMES = ("torch", "torchvision", "torchaudio")
# ComfyUI's files that import torchaudio at load time (checked against ComfyUI 2025-10-12:
# `git grep -l "import torchaudio"`): their nodes fail with IMPORT FAILED without it.
TORCHAUDIO_NODES = ("comfy_extras/nodes_audio.py", "comfy_extras/nodes_audio_encoder.py")
# Models whose code imports torchaudio lazily and breaks without it (no IMPORT FAILED line).
TORCHAUDIO_MODELS = ("ACE-Step (comfy/ldm/ace)", "MMAudio VAE (comfy/ldm/mmaudio)")
CUDA_PREFIXES = ("nvidia-", "cuda-")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class FamilyError(IncompatibleTarget):
    """A target's torch family cannot work as configured or as resolved (refuses the plan)."""


class MixedFamily(FamilyError):
    """The resolution mixes build variants inside the family, or pins another torch."""


@dataclass(frozen=True)
class TorchFamily:
    """One target's family: versions without local label; None where a member is left out."""

    target: str
    torch: str
    torchvision: str | None
    torchaudio: str | None
    extras: tuple[str, ...] = ()
    no_audio_reason: str = ""  # why torchaudio is None

    def specs(self) -> list[str]:
        """The torch layer's specs: the whole family, pinned."""
        specs = [f"torch=={self.torch}"]
        if self.torchvision:
            specs.append(f"torchvision=={self.torchvision}")
        if self.torchaudio:
            specs.append(f"torchaudio=={self.torchaudio}")
        return specs + list(self.extras)

    def constraint_lines(self) -> list[str]:
        """The family as pip constraints (constraints may not carry extras)."""
        lines = []
        for spec in self.specs():
            req = Requirement(spec)
            marker = f"; {req.marker}" if req.marker else ""
            lines.append(f"{req.name}{req.specifier}{marker}")
        return lines

    @property
    def names(self) -> tuple[str, ...]:
        """Canonical names of the members the family pins."""
        return tuple(canonicalize_name(Requirement(spec).name) for spec in self.specs())


def from_target(target: GpuTarget) -> TorchFamily:
    """The family exactly as the target names it (no matrix data): what was given, nothing more."""

    def given(value: str | None) -> str | None:
        return None if value in (None, NO_MEMBER) else value

    return TorchFamily(
        target.name,
        target.torch,
        given(target.torchvision),
        given(target.torchaudio),
        target.torch_extra,
        "" if given(target.torchaudio) else f"gpu_targets.{target.name}.torchaudio is not set",
    )


def _pair(torch: str, vision: str, audio: str | None) -> str:
    return f"torch {torch} + torchvision {vision} + torchaudio {audio or 'none (none exists)'}"


def family_for(target: GpuTarget, matrix: Matrix) -> TorchFamily:
    """The target's family: omitted members from the matrix's ``families``, explicit ones
    checked against it. Raises ``FamilyError`` naming ``gpu_targets.<t>.<member>``."""
    where = f"gpu_targets.{target.name}"
    known = matrix.family(target.torch)
    members = {"torchvision": target.torchvision, "torchaudio": target.torchaudio}
    if known is None:
        if all(value == NO_MEMBER for value in members.values()):
            return from_target(target)
        named = [f"{where}.{m}" for m, value in members.items() if value not in (None, NO_MEMBER)]
        what = (
            f"{' and '.join(named)} name versions the data cannot check"
            if named
            else f"{where} leaves torchvision and torchaudio to the data"
        )
        raise FamilyError(
            f"{target.name}: {MATRIX_VAR}.families knows no family for torch {target.torch}; "
            f"{what}. Fix: add {{torch: '{target.torch}', torchvision: '<version>', "
            f"torchaudio: '<version>' or null}} under {EXTRA_VAR}.families once the wheels are "
            f"checked to exist, or set {where}.torchvision and {where}.torchaudio to "
            f"{NO_MEMBER} to build torch alone"
        )
    chosen: dict[str, str | None] = {}
    reason = ""
    for member, value in members.items():
        data_value: str | None = getattr(known, member)
        if value == NO_MEMBER:
            chosen[member] = None
            if member == "torchaudio":
                reason = f"{where}.torchaudio is {NO_MEMBER}"
            continue
        if value is None:
            chosen[member] = data_value
            if member == "torchaudio" and data_value is None:
                reason = f"no torchaudio exists for torch {known.torch} ({MATRIX_VAR}.families)"
            continue
        if data_value is None or Version(value) != Version(data_value):
            pair = _pair(known.torch, known.torchvision, known.torchaudio)
            raise FamilyError(
                f"{target.name}: {where}.{member} is {value!r}, but the family the data knows "
                f"for torch {target.torch} is {pair} "
                f"({MATRIX_VAR}.families). Fix: set {where}.{member}: "
                f"{repr(data_value) if data_value else NO_MEMBER} (or leave it out), or add the "
                f"pair under {EXTRA_VAR}.families if those wheels exist"
            )
        chosen[member] = value
    return TorchFamily(
        target.name,
        target.torch,
        chosen["torchvision"],
        chosen["torchaudio"],
        target.torch_extra,
        reason,
    )


# ---------------------------------------------------------------------------------------------
# After the resolution: one build variant.


def variant(version: str) -> str:
    """The build variant of a version: its local label (``cpu``, ``cu128``), "" for none."""
    try:
        return Version(version).local or ""
    except InvalidVersion:
        return ""


def describe_variant(label: str) -> str:
    return f"+{label}" if label else "no local label (the index's default build)"


def requires_from_report(report: Mapping[str, object]) -> dict[str, tuple[str, ...]]:
    """Each distribution's Requires-Dist lines from a pip installation report."""
    out: dict[str, tuple[str, ...]] = {}
    for item in report.get("install") or ():  # type: ignore[union-attr]
        metadata = item.get("metadata") or {}
        if "name" in metadata:
            out[canonicalize_name(metadata["name"])] = tuple(metadata.get("requires_dist") or ())
    return out


def _requesters(name: str, graph: Mapping[str, ResolvedDist]) -> list[str]:
    return sorted(
        dist.name for dist in graph.values() if any(dep.name == name for dep in dist.deps)
    )


def _fix(target: str, member: str, version: str, torch: str, labels: tuple[str, str]) -> str:
    """How to make ``member`` the build torch is (``labels``: torch's, the member's)."""
    torch_label, member_label = labels
    where = f"gpu_targets.{target}"
    public = Version(version).public
    if torch_label:
        if not member_label:
            other = "a CUDA build" if torch_label == "cpu" else "the index's default build"
        else:
            other = f"its +{member_label} build"
        return (
            f"give {where} a torch_index_url (or torch_wheelhouse) that serves {member} "
            f"{public}+{torch_label}, or pin torch to {other}"
        )
    return (
        f"give {where} a torch_index_url (or torch_wheelhouse) that serves torch "
        f"{Version(torch).public}+{member_label} as well, or drop the index that serves "
        f"{member} {public}+{member_label}"
    )


def check_resolution(
    family: TorchFamily,
    resolution: Resolution,
    requires: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Refuse a resolution that mixes build variants in the family or pins another torch.

    ``requires`` are the resolved distributions' Requires-Dist lines (``requires_from_report``);
    without them only the variants are checked.
    """
    graph = resolution.by_name()
    torch = graph.get("torch")
    t = family.target
    if torch is None:
        raise MixedFamily(
            f"{t}: the resolution holds no torch. Fix: check gpu_targets.{t}.torch and its "
            "index (package_layers_exclude must not name torch)"
        )
    torch_label = variant(torch.version)
    members = [n for n in (*FAMILY_NAMES, *family.names) if n in graph and n != "torch"]
    for name in dict.fromkeys(members):
        dist = graph[name]
        label = variant(dist.version)
        if label == torch_label:
            continue
        by = _requesters(name, graph)
        pinned = name in family.names
        who = []
        if pinned:
            who.append(f"the target's family pin {name}=={Version(dist.version).public}")
        if by:
            who.append(f"required by {', '.join(by)}")
        pulled = " and ".join(who) or "pulled in by the resolution"
        first = by[0] if by else f"gpu_targets.{t}"
        raise MixedFamily(
            f"{t}: the torch family mixes builds: torch {torch.version} "
            f"({describe_variant(torch_label)}) but {name} {dist.version} "
            f"({describe_variant(label)}), {pulled}; {first} pulled the wrong {name} build, "
            f"which fails at start (e.g. 'operator torchvision::nms does not exist'). "
            f"Fix: {_fix(t, name, dist.version, torch.version, (torch_label, label))}"
        )
    env = dict(resolution.environment)
    for name, lines in sorted((requires or {}).items()):
        if name == "torch" or name not in graph:
            continue
        for text in lines:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue  # package_layers refuses bad requirements when it parses the report
            if canonicalize_name(req.name) != "torch":
                continue
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            if not any(spec.operator in ("==", "===") for spec in req.specifier):
                continue
            if req.specifier.contains(torch.version, prereleases=True):
                continue
            dist = graph[name]
            raise MixedFamily(
                f"{t}: {dist.name} {dist.version} requires {text} (its Requires-Dist), but the "
                f"target's torch is {torch.version}; required by "
                f"{', '.join(_requesters(name, graph)) or 'the layer specs'}. Fix: pin "
                f"{dist.name} to the release built for torch {Version(torch.version).public} "
                f"(or name it in gpu_targets.{t}.torch_extra from the same index), or move "
                f"gpu_targets.{t}.torch to the torch it pins"
            )


# ---------------------------------------------------------------------------------------------
# Notes and node info.


def family_pins(family: TorchFamily, layers: Iterable[Layer]) -> dict[str, str]:
    """The resolved version of every family member present (torchvision etc. included)."""
    wanted = set(FAMILY_NAMES) | set(family.names)
    return {d.name: d.version for layer in layers for d in layer.dists if d.name in wanted}


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size} bytes"


def family_notes(
    target: GpuTarget,
    family: TorchFamily,
    layers: Sequence[Layer],
    sizes: Mapping[str, int] | None = None,
) -> list[str]:
    """What the plan says about a target's family (not refusals): no torchaudio; a cpu target
    with a CUDA build of torch and what that weighs (``sizes``: name -> bytes, where known)."""
    notes: list[str] = []
    dists = {d.name: d for layer in layers for d in layer.dists}
    if "torchaudio" not in dists:
        reason = family.no_audio_reason or "torchaudio is not in the resolution"
        notes.append(
            f"{target.name}: no torchaudio ({reason}): ComfyUI's audio nodes "
            f"({', '.join(TORCHAUDIO_NODES)}) will not load, and "
            f"{', '.join(TORCHAUDIO_MODELS)} break"
        )
    torch = dists.get("torch")
    if target.is_cpu and torch is not None:
        label = variant(torch.version)
        cuda = sorted(n for n in dists if n.startswith(CUDA_PREFIXES))
        if label != "cpu" and (cuda or label.startswith("cu")):
            known = {n: (sizes or {}).get(n) for n in cuda}
            sized = [s for s in known.values() if s is not None]
            if cuda and len(sized) == len(cuda):
                plural = "s" if len(cuda) != 1 else ""
                weight = f"{len(cuda)} nvidia/cuda wheel{plural}, {_mb(sum(sized))}"
            elif sized:
                weight = (
                    f"{len(cuda)} nvidia/cuda distributions, {_mb(sum(sized))} for the "
                    f"{len(sized)} whose size is known"
                )
            else:
                weight = f"{len(cuda)} nvidia/cuda distributions (sizes not known)"
            notes.append(
                f"{target.name}: a cpu target gets a CUDA build of torch ({torch.pin}, "
                f"{describe_variant(label)}): {weight} ride along unused. To drop them give "
                f"gpu_targets.{target.name} a torch_index_url serving +cpu wheels of the whole "
                f"family (e.g. {CPU_INDEX})"
            )
    return notes


def split_family_lines(specs: Sequence[str]) -> tuple[list[str], list[str]]:
    """ComfyUI's requirement lines without the family's (``torch``, ``torchvision>=x``...),
    and those family lines: the target's family provides them."""
    kept: list[str] = []
    dropped: list[str] = []
    for spec in specs:
        try:
            name = canonicalize_name(Requirement(spec).name)
        except InvalidRequirement:
            kept.append(spec)  # the resolution names a bad line with its own message
            continue
        (dropped if name in FAMILY_NAMES else kept).append(spec)
    return kept, dropped


def dropped_line_notes(
    family: TorchFamily, dropped: Sequence[str], pins: Mapping[str, str]
) -> list[str]:
    """A note per ComfyUI family line whose version range the family's pin falls outside."""
    notes = []
    for spec in dropped:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        version = pins.get(name)
        if version and req.specifier and not req.specifier.contains(version, prereleases=True):
            notes.append(
                f"{family.target}: ComfyUI's requirements ask for {spec}; the target's family "
                f"has {name} {version}"
            )
    return notes
