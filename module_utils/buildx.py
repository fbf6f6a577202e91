"""Read BuildKit's version and what it can do from ``docker buildx inspect`` and ``docker version``.

Later roles choose cache export, ``COPY --link`` and attestations from these facts instead of
guessing (REQUIREMENTS: support newer BuildKit features behind a capability check).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BuilderCapabilities:
    name: str
    driver: str
    buildkit_version: str
    buildx_version: str
    engine_version: str
    cache_export: tuple[str, ...]
    copy_link: bool
    attestations: bool
    platforms: tuple[str, ...]

    def as_facts(self) -> dict:
        facts = asdict(self)
        facts["cache_export"] = list(self.cache_export)
        facts["platforms"] = list(self.platforms)
        return facts


def version_tuple(text: str) -> tuple[int, ...]:
    """``v0.13.2+ds1`` -> (0, 13, 2); text without a version -> ()."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return ()
    return tuple(int(g) for g in m.groups() if g is not None)


def _first_version(text: str) -> str:
    m = re.search(r"v?\d+\.\d+(?:\.\d+)?\S*", text)
    return m.group(0) if m else ""


def parse_inspect(text: str) -> dict[str, str]:
    """The builder's and its first node's ``Key: value`` lines of ``docker buildx inspect``.

    Keys are lowercased; the builder's own fields (``Name``, ``Driver``) win over the node's of
    the same key. Node fields may be printed flush left (buildx 0.8 - 0.17+) or indented under
    ``Nodes:``; either way only the first node is read. Blocks opened by a key without a value
    (``Labels:``, ``GC Policy rule#0:``) hold indented sub-fields, which are
    skipped so that e.g. a label cannot pose as ``Platforms``.
    """
    fields: dict[str, str] = {}
    in_nodes = False
    node_names = 0
    skip_deeper_than: int | None = None  # indent of a block header whose children we ignore
    for line in text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        key, sep, value = line.strip().partition(":")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key:
            continue
        if not value:
            if key == "nodes":
                in_nodes = True
            else:
                skip_deeper_than = indent
            continue
        if in_nodes and key == "name":
            node_names += 1
            if node_names > 1:
                break  # the second node: its fields are not the first node's
        fields.setdefault(key, value)
    return fields


def capabilities(
    inspect_text: str, buildx_version_text: str, engine_version: str, containerd_store: bool
) -> BuilderCapabilities:
    """Derive what this builder can do.

    - cache export: the docker driver writes inline cache only (unless the engine uses the
      containerd image store); docker-container / remote / kubernetes export to a registry.
    - COPY --link: the Dockerfile frontend bundled since BuildKit 0.10 (no ``# syntax`` pull).
    - attestations: BuildKit >= 0.11 on a driver that can store them (not the classic store).
    """
    fields = parse_inspect(inspect_text)
    driver = fields.get("driver", "docker")
    bk_text = fields.get("buildkit version") or fields.get("buildkit") or ""
    bk = version_tuple(bk_text)
    exporting = driver != "docker" or containerd_store
    cache = ("inline", "registry", "local") if exporting else ("inline",)
    # buildx marks platforms the builder was created with by a trailing "*".
    platforms = tuple(
        p.strip().rstrip("*") for p in fields.get("platforms", "").split(",") if p.strip()
    )
    return BuilderCapabilities(
        name=fields.get("name", ""),
        driver=driver,
        buildkit_version=bk_text.split()[0] if bk_text else "",
        buildx_version=_first_version(buildx_version_text),
        engine_version=engine_version.strip(),
        cache_export=cache,
        copy_link=bk >= (0, 10),
        attestations=bk >= (0, 11) and exporting,
        platforms=platforms,
    )
