"""The build report: one row per image (built / cached / failed / skipped and why), with its
digest, compressed size per layer, build and push time and bytes pushed; as JSON, a table and
an SVG chart of layer sizes per image (DESIGN section 1, step 6).

Pure functions over what the plan, image_build, image_verify and image_push returned, plus
the manifests and configs read from the registry (``registry_layers`` does the reading).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible.module_utils.gitsource import redact
from ansible.module_utils.registry import RegistryError, Writer, parse_ref

OWNER_COLOURS = {
    "os-base": "#9e9e9e",
    "base-common": "#4e79a7",
    "base-gpu": "#f28e2b",
    "template": "#59a14f",
}
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


@dataclass
class Layer:
    digest: str
    size: int  # compressed bytes, as the manifest says
    owner: str = ""  # the node whose build added the layer (its first image in the chain)
    step: str = ""  # the Dockerfile step, from the config's history


@dataclass
class Row:
    node: str
    kind: str
    target: str
    status: str  # built | cached | failed | skipped | planned
    why: str = ""
    ref: str = ""
    digest: str = ""
    verified: str = ""  # passed | failed | "" (bases and cached images are not re-verified)
    pushed: bool = False
    tags: list[str] = field(default_factory=list)
    build_seconds: float = 0.0
    push_seconds: float = 0.0
    bytes_pushed: int = 0
    builder: str = ""  # the builder the plan placed it on
    layers: list[Layer] = field(default_factory=list)
    # skipped: "failure" (an input could not be had, a parent failed: the run fails) or
    # "intent" (left out on purpose: a note)
    kind_of_skip: str = ""
    cause: list[str] = field(default_factory=list)  # a failed build: its step's last lines

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def own_size(self) -> int:
        return sum(layer.size for layer in self.layers if layer.owner == self.node)


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Rows


def rows(
    nodes: Sequence[Mapping[str, Any]],
    build: Mapping[str, Mapping[str, Any]],
    verify: Mapping[str, Mapping[str, Any]],
    push: Mapping[str, Mapping[str, Any]],
    builder_of: Mapping[str, str] | None = None,
    reported: Sequence[str] | None = None,
) -> list[Row]:
    """One row per image of the plan, in plan order (the OS base is ``external``).

    ``build`` is keyed by node, ``verify`` by node, ``push`` by image reference (what the
    roles return). A built image that failed verification or push counts as failed: it was
    not published. ``builder_of`` (node -> builder) and ``reported`` (the builders that saw
    their share through): an image left unfinished by a builder that failed or vanished
    midway (planned, or built but not pushed) failed with it.
    """
    builder_of = builder_of or {}
    out = []
    for node in nodes:
        name = node["name"]
        row = Row(
            node=name,
            kind=node.get("kind", ""),
            target=node.get("target") or "",
            status=node.get("status", ""),
            why=node.get("reason", ""),
            ref=node.get("ref", ""),
            digest=node.get("digest", ""),
            builder=builder_of.get(name, ""),
            kind_of_skip=node.get("kind_of_skip", ""),
        )
        built = build.get(name)
        if built:
            row.status = built.get("status", row.status)
            row.why = built.get("reason", "") or row.why
            row.build_seconds = float(built.get("seconds") or 0.0)
            row.digest = built.get("digest", "") or row.digest
            row.cause = list(built.get("cause") or [])
            row.kind_of_skip = built.get("kind_of_skip", "") or row.kind_of_skip
        if row.status == "skipped" and not row.kind_of_skip:
            row.kind_of_skip = "failure"  # a parent failed or was skipped: not on purpose
        if row.status == "stale":  # planned but the build step never ran (aiclipse_build=false)
            row.status = "planned"
        checked = verify.get(name)
        if checked:
            row.verified = checked.get("status", "")
            if row.verified == "failed":
                row.status = "failed"
                summary_, report = checked.get("summary", ""), checked.get("report", "")
                row.why = f"verification failed: {summary_} ({report})"
                row.cause = [*row.cause, *(str(line) for line in checked.get("causes") or [])]
        sent = push.get(row.ref)
        if sent:
            row.push_seconds = float(sent.get("seconds") or 0.0)
            if sent.get("status") == "pushed":
                row.pushed = True
                row.digest = sent.get("digest", "") or row.digest
                row.tags = list(sent.get("tags", []))
                row.bytes_pushed = int(sent.get("bytes_pushed", 0))
            else:
                row.status = "failed"
                row.why = f"push failed: {sent.get('error', '')}"
        elif row.status == "built":
            row.why = row.why or "not pushed"
        lost = reported is not None and row.builder and row.builder not in reported
        if lost and row.status in ("planned", "built") and not row.pushed:
            row.status = "failed"
            row.why = (
                f"builder {row.builder} did not finish (unreachable, or it failed: "
                "see the run's output)"
            )
        row.why = redact(row.why)  # a repository URL with credentials stays out of reports
        row.cause = [redact(line) for line in row.cause]
        out.append(row)
    return out


def ancestors(node: str, parents: Mapping[str, str | None]) -> list[str]:
    """The parent chain of ``node``, nearest first."""
    chain, name = [], parents.get(node)
    while name and name not in chain:
        chain.append(name)
        name = parents.get(name)
    return chain


def attribute_layers(rows_: list[Row], parents: Mapping[str, str | None]) -> None:
    """Name each layer's owner: the image furthest up the parent chain that holds it (the
    node whose build added it). Without an ancestor's layers, its layers count as the row's."""
    digests = {row.node: {layer.digest for layer in row.layers} for row in rows_}
    for row in rows_:
        chain = [name for name in ancestors(row.node, parents) if name in digests]
        for layer in row.layers:
            layer.owner = row.node
            for name in chain:
                if layer.digest in digests[name]:
                    layer.owner = name


def layers_of(manifest: Mapping[str, Any], config: Mapping[str, Any]) -> list[Layer]:
    """The manifest's layers with the Dockerfile step that made each (empty-layer steps such
    as ENV or LABEL have no layer and are passed over)."""
    steps = [
        h.get("created_by", "")
        for h in config.get("history", [])
        if not h.get("empty_layer", False)
    ]
    out = []
    for index, layer in enumerate(manifest.get("layers", [])):
        step = steps[index] if index < len(steps) else ""
        out.append(Layer(digest=layer["digest"], size=int(layer.get("size", 0)), step=_step(step)))
    return out


def _step(created_by: str) -> str:
    text = " ".join(created_by.replace("/bin/sh -c #(nop)", "").split())
    text = text.removeprefix("|0 ").strip()
    return text[:160]


def registry_layers(ref: str, registry: Writer, platform: str = "linux/amd64") -> list[Layer]:
    """Read ``ref``'s manifest (the platform's one from an index) and config."""
    parsed = parse_ref(ref)
    media, body, _ = registry.get_manifest(parsed.repository, parsed.reference)
    manifest = json.loads(body)
    if media in INDEX_TYPES or "manifests" in manifest:
        os_, _, arch = platform.partition("/")
        for entry in manifest.get("manifests", []):
            plat = entry.get("platform", {})
            if plat.get("os") == os_ and plat.get("architecture") == arch:
                _, body, _ = registry.get_manifest(parsed.repository, entry["digest"])
                manifest = json.loads(body)
                break
        else:
            raise RegistryError(f"{ref}: the index has no {platform} manifest")
    config = json.loads(registry.get_blob(parsed.repository, manifest["config"]["digest"]))
    return layers_of(manifest, config)


# ---------------------------------------------------------------------------------------------
# Summary, table, chart

IMAGE_STATUSES = ("built", "cached", "failed", "skipped", "planned")


def images(rows_: Iterable[Row]) -> list[Row]:
    """The rows that are images this farm makes (the OS base is an input, not an output)."""
    return [row for row in rows_ if row.kind != "os-base"]


def failed_skip(row: Row, intent_fails: bool = False) -> bool:
    """A skipped image the run fails on: skipped for a failure (or on purpose, when asked)."""
    return row.status == "skipped" and (row.kind_of_skip != "intent" or intent_fails)


def failures(rows_: Sequence[Row], intent_fails: bool = False) -> list[str]:
    """What fails the run, one entry per image with why; a failed build's cause follows in
    indented ``<image>| <line>`` entries (the last lines of its failing step)."""
    out = []
    for row in images(rows_):
        if row.status == "failed":
            out.append(f"{row.node}: {row.why}")
            out += [f"  {row.node}| {line}" for line in row.cause]
        elif failed_skip(row, intent_fails):
            out.append(f"{row.node}: skipped: {row.why}")
    return out


def notes(rows_: Sequence[Row], intent_fails: bool = False) -> list[str]:
    """Images left out on purpose (a note, not a failure)."""
    return [
        f"{row.node}: skipped on purpose: {row.why}"
        for row in images(rows_)
        if row.status == "skipped" and not failed_skip(row, intent_fails)
    ]


def summary(rows_: Sequence[Row]) -> dict[str, Any]:
    mine = images(rows_)
    unique: dict[str, int] = {}
    for row in rows_:
        for layer in row.layers:
            unique[layer.digest] = layer.size
    return {
        **{status: [r.node for r in mine if r.status == status] for status in IMAGE_STATUSES},
        "bytes_pushed": sum(r.bytes_pushed for r in mine),
        "build_seconds": round(sum(r.build_seconds for r in mine), 1),
        "push_seconds": round(sum(r.push_seconds for r in mine), 1),
        # what pulling every image would move without sharing vs what the registry stores
        "images_bytes": sum(r.size for r in mine),
        "unique_bytes": sum(unique.values()),
        "ok": not any(r.status == "failed" or failed_skip(r) for r in mine),
    }


def table(rows_: Sequence[Row]) -> str:
    """One line per image: status, node, (builder, in a fleet,) digest, size (own), build and
    push time, pushed, why."""
    fleet = len({row.builder for row in images(rows_)} - {""}) > 1
    head = ("STATUS", "IMAGE", "BUILDER", "DIGEST", "SIZE", "OWN", "BUILD", "PUSH", "PUSHED", "WHY")
    lines = [head]
    for row in images(rows_):
        lines.append(
            (
                row.status,
                row.node,
                row.builder or "-",
                row.digest.removeprefix("sha256:")[:12] or "-",
                human(row.size) if row.layers else "-",
                human(row.own_size()) if row.layers else "-",
                f"{row.build_seconds:.1f}s" if row.build_seconds else "-",
                f"{row.push_seconds:.1f}s" if row.push_seconds else "-",
                human(row.bytes_pushed) if row.pushed else "-",
                row.why or "-",
            )
        )
    if not fleet:  # one builder: its name in every row says nothing
        lines = [line[:2] + line[3:] for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])) + "  " + line[-1]
        for line in lines
    )


def svg(rows_: Sequence[Row], title: str = "Compressed layer sizes per image") -> str:
    """A horizontal stacked bar per image, one segment per layer coloured by the node kind
    that added it (OS base, base-common, base-gpu, template); each segment's tooltip names
    the Dockerfile step and size. Under the bars: the sum of the images vs the bytes the
    registry stores once (layers are shared, never duplicated)."""
    drawn = [row for row in images(rows_) if row.layers]
    kinds = {row.node: row.kind for row in rows_}
    left, bar, gap, width = 220, 22, 10, 560
    biggest = max((row.size for row in drawn), default=0) or 1
    height = 70 + len(drawn) * (bar + gap) + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 140}" '
        f'height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>',
    ]
    y = 45
    for row in drawn:
        out.append(
            f'<text x="{left - 8}" y="{y + bar * 0.7:.0f}" text-anchor="end">'
            f"{html.escape(row.node)}</text>"
        )
        x = float(left)
        for layer in row.layers:
            w = width * layer.size / biggest
            colour = OWNER_COLOURS.get(kinds.get(layer.owner, "template"), "#bab0ac")
            tip = f"{layer.owner}: {human(layer.size)} {layer.step}"
            out.append(
                f'<rect x="{x:.2f}" y="{y}" width="{max(w, 0.5):.2f}" height="{bar}" '
                f'fill="{colour}" stroke="#fff" stroke-width="0.5">'
                f"<title>{html.escape(tip)}</title></rect>"
            )
            x += w
        out.append(
            f'<text x="{x + 6:.0f}" y="{y + bar * 0.7:.0f}">{human(row.size)} '
            f"({html.escape(row.status)})</text>"
        )
        y += bar + gap
    x = 10
    for kind, colour in OWNER_COLOURS.items():
        out.append(f'<rect x="{x}" y="{y + 8}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 16}" y="{y + 18}">{kind}</text>')
        x += 120
    totals = summary(rows_)
    out.append(
        f'<text x="10" y="{y + 42}">sum of image sizes {human(totals["images_bytes"])}; '
        f"stored once in the registry {human(totals['unique_bytes'])}</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def document(rows_: Sequence[Row], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON report: what was asked, the totals and one entry per image."""
    entries = []
    for row in rows_:
        item = asdict(row)
        item["size"] = row.size
        item["own_size"] = row.own_size()
        entries.append(item)
    return {**dict(meta), "summary": summary(rows_), "images": entries}
