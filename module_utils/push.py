"""Push one built image and move its tags only after the registry confirms its digest.

``docker push`` of the node's hash tag uploads what the registry lacks; its output names the
layers it uploaded (by truncated diff id) and the manifest digest. The registry's own
``Docker-Content-Digest`` must equal that digest (REG-1) before the release tags are moved
by manifest (REG-2): a push killed midway never moves a tag (REG-4).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ansible.module_utils.registry import RegistryError, Writer, parse_ref

_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)")
_LAYER = re.compile(r"^([0-9a-f]{12}): (Pushed|Layer already exists|Mounted from .+)$", re.M)
_DENIED = ("unauthorized", "denied", "authentication required", "401", "403")

# runner(argv) -> (exit status, combined output)
Runner = Callable[[Sequence[str]], tuple[int, str]]


class PushError(Exception):
    """The push failed; the message says why and what to do."""


@dataclass
class PushResult:
    ref: str
    digest: str = ""
    bytes_pushed: int = 0
    layers_pushed: int = 0
    layers_present: int = 0
    tags: list[str] = field(default_factory=list)
    attempts: int = 0


def parse_push(output: str) -> tuple[str, set[str], set[str]]:
    """(manifest digest, ids of layers uploaded, ids of layers the registry had)."""
    digest = _DIGEST.search(output)
    pushed, present = set(), set()
    for layer_id, what in _LAYER.findall(output):
        (pushed if what == "Pushed" else present).add(layer_id)
    return (digest.group(1) if digest else ""), pushed, present - pushed


def bytes_pushed(diff_ids: Sequence[str], manifest: dict, pushed_ids: set[str]) -> int:
    """Compressed bytes uploaded: the manifest's layer sizes of the layers docker pushed
    (the config's diff ids and the manifest's layers are in the same order)."""
    layers = manifest.get("layers", [])
    total = 0
    for diff_id, layer in zip(diff_ids, layers, strict=False):
        if diff_id.removeprefix("sha256:")[:12] in pushed_ids:
            total += int(layer.get("size", 0))
    return total


def push(
    ref: str,
    diff_ids: Sequence[str],
    release_tags: Sequence[str],
    writer: Writer,
    run: Runner,
    attempts: int = 3,
    sleep: Callable[[float], None] | None = None,
) -> PushResult:
    """Push ``ref`` (a hash tag), confirm the digest, then move ``release_tags`` to it."""
    parsed = parse_ref(ref)
    result = PushResult(ref=ref)
    output = ""
    for attempt in range(1, attempts + 1):
        result.attempts = attempt
        status, output = run(["docker", "push", ref])
        if status == 0:
            break
        if any(word in output.lower() for word in _DENIED):
            raise PushError(
                f"{parsed.registry} refused the push of {ref} (auth): set "
                "AICLIPSE_REGISTRY_USERNAME and AICLIPSE_REGISTRY_PASSWORD (a token that may "
                "write packages) and run again"
            )
        if attempt == attempts:
            tail = " | ".join(output.strip().splitlines()[-3:])
            raise PushError(f"docker push {ref} failed {attempts} times: {tail}")
        (sleep or writer.sleep)(2.0 * attempt)
    digest, pushed_ids, present_ids = parse_push(output)
    if not digest:
        raise PushError(f"docker push {ref} printed no digest; output ends: {output[-300:]}")
    try:
        remote = writer.manifest_digest(parsed.repository, parsed.reference)
        if remote != digest:
            raise PushError(
                f"{ref}: the registry reports {remote} but the push wrote {digest}; "
                "no tag was moved (REG-1)"
            )
        _, body, _ = writer.get_manifest(parsed.repository, digest)
        result.tags = writer.retag(parsed.repository, digest, list(release_tags))
    except RegistryError as err:
        raise PushError(f"{ref}: {err}; no release tag was moved") from err
    result.digest = digest
    result.layers_pushed = len(pushed_ids)
    result.layers_present = len(present_ids)
    result.bytes_pushed = bytes_pushed(diff_ids, json.loads(body), pushed_ids)
    return result
