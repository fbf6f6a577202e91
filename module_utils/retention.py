"""Which dated tags a nightly may delete, and deleting them through the registry API.

Every rebuilt template image gets a dated tag ``<image>-<YYYYMMDD>`` beside its release tag
``<image>`` and hash tag ``<image>-<12 hex>``. A nightly keeps the newest ``keep`` dated tags
of each image and deletes the older ones. Registries delete manifests, not tags, so a
manifest is deleted only when every tag pointing at it is an old dated tag or a hash tag of
that same image: a manifest that the release tag, a kept dated tag, another image's tag or
any tag a person made still points at is kept (and says why). The newest dated tag is always
kept, so nothing is deleted that something newer does not replace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ansible.module_utils.registry import DeleteUnsupported, RegistryError, Writer


@dataclass
class Decision:
    delete: dict[str, list[str]] = field(default_factory=dict)  # digest -> tags it takes along
    kept: dict[str, str] = field(default_factory=dict)  # old dated tag -> why it stays
    unsupported: str = ""  # the registry refuses deletes: why and the fix (nothing deleted)


def dated_tags(tags: Iterable[str], image: str) -> list[str]:
    """``image``'s dated tags, newest first."""
    pattern = re.compile(rf"{re.escape(image)}-(\d{{8}})")
    found = [tag for tag in tags if pattern.fullmatch(tag)]
    return sorted(found, key=lambda tag: tag[-8:], reverse=True)


def decide(
    digests: Mapping[str, str],
    images: Iterable[str],
    keep: int,
    protected: Iterable[str] = (),
) -> Decision:
    """``digests``: tag -> manifest digest of one repository. ``images``: the template image
    names whose dated tags are pruned. ``protected``: what this run uses, never deleted:
    digests (``sha256:...``, what it pushed) and tags (the plan's hash tags, cached images
    included: an input reverted to an old hash makes that old image current again)."""
    if keep < 1:
        return Decision()
    decision = Decision()
    holders: dict[str, list[str]] = {}
    for tag, digest in digests.items():
        holders.setdefault(digest, []).append(tag)
    safe = {p for p in protected if p.startswith("sha256:")}
    safe |= {digests[p] for p in protected if p in digests}
    for image in images:
        old = set(dated_tags(digests, image)[keep:])
        own_hash = re.compile(rf"{re.escape(image)}-[0-9a-f]{{12}}")
        for tag in sorted(old):
            digest = digests[tag]
            others = [t for t in holders[digest] if t not in old and not own_hash.fullmatch(t)]
            if digest in safe:
                decision.kept[tag] = f"its image {digest[:19]} is in use by this run"
            elif others:
                decision.kept[tag] = f"{', '.join(sorted(others))} still points at {digest[:19]}"
            else:
                decision.delete[digest] = sorted(holders[digest])
    return decision


def prune(
    writer: Writer,
    repository: str,
    images: Iterable[str],
    keep: int,
    protected: Iterable[str] = (),
    dry_run: bool = False,
) -> tuple[Decision, list[str]]:
    """Read the repository's tags, decide, and delete (unless ``dry_run``). Returns the
    decision and the errors of deletes that failed (the others still go ahead)."""
    digests = {}
    for tag in writer.tags(repository):
        digest = writer.manifest_digest(repository, tag)
        if digest:
            digests[tag] = digest
    decision = decide(digests, images, keep, protected)
    errors = []
    if not dry_run:
        for digest in list(decision.delete):
            try:
                writer.delete_manifest(repository, digest)
            except DeleteUnsupported as err:
                # not a failure of the night: this registry prunes by its own policy
                decision.unsupported = str(err)
                decision.delete = {}
                break
            except RegistryError as err:
                errors.append(str(err))
    return decision, errors
