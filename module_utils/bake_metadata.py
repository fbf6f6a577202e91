"""Read the file ``docker buildx bake --metadata-file`` writes: per target, what was built.

The file maps each bake target to BuildKit's exporter response. Which keys appear depends
on the builder:

* BuildKit 0.8 with the ``docker`` driver (Debian 12's docker.io 20.10, recorded here):
  ``containerimage.digest`` only, and it is the image id (the config digest) of the image
  loaded into the engine; there is no manifest digest before a push.
* Newer BuildKit: ``containerimage.config.digest`` (the image id), ``containerimage.digest``
  and ``containerimage.descriptor`` (the manifest digest), ``image.name`` (the tags).

A target missing from the file was not built by that call (bake writes no file at all when
any target of the call failed).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


class MetadataError(Exception):
    """The metadata file is not what buildx writes; the message names the file."""


@dataclass(frozen=True)
class BuildResult:
    target: str
    image_id: str  # config digest: what `docker image inspect .Id` shows
    digest: str  # manifest digest where the builder reports one, else ""
    image_names: tuple[str, ...]
    build_ref: str

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["image_names"] = list(self.image_names)
        return out


def _result(target: str, entry: dict[str, Any]) -> BuildResult:
    config = entry.get("containerimage.config.digest", "")
    descriptor = entry.get("containerimage.descriptor") or {}
    reported = entry.get("containerimage.digest", "")
    if config:
        image_id, digest = config, descriptor.get("digest") or reported
    else:  # BuildKit 0.8 docker exporter: the one digest is the loaded image's id
        image_id, digest = reported, descriptor.get("digest", "")
    names = tuple(n for n in str(entry.get("image.name", "")).split(",") if n)
    return BuildResult(target, image_id, digest, names, entry.get("buildx.build.ref", ""))


def parse_metadata(
    data: str | bytes | dict[str, Any], source: str = "<metadata>"
) -> dict[str, BuildResult]:
    """Target name -> BuildResult for every target the metadata names."""
    if not isinstance(data, dict):
        try:
            data = json.loads(data or "{}")
        except ValueError as err:
            raise MetadataError(
                f"{source}: not JSON ({err}); is it a buildx metadata file?"
            ) from err
    if not isinstance(data, dict):
        raise MetadataError(f"{source}: expected an object of targets, got {type(data).__name__}")
    results = {}
    for target, entry in data.items():
        if not isinstance(entry, dict):
            continue  # e.g. "buildx.build.warnings" (a list) in newer buildx
        result = _result(target, entry)
        if result.image_id or result.digest:
            results[target] = result
    return results


def read_metadata(path: str | Path, single: str | None = None) -> dict[str, BuildResult]:
    """Parse the file at ``path``; a missing or empty file means nothing was built.

    ``single``: the file is ``docker buildx build``'s (one build, not keyed by target);
    report it under that target name."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    if single is not None:
        try:
            data = json.loads(text or "{}")
        except ValueError as err:
            raise MetadataError(f"{path}: not JSON ({err})") from err
        return parse_metadata({single: data}, str(path))
    return parse_metadata(text, str(path))
