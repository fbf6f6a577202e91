"""Deterministic content hashes for build graph nodes (BLD-7).

Same inputs give the same hash on any machine: trees are walked in sorted order and hashed by
relative path, content and the executable bit only (never mtimes, owners, umask-dependent
mode bits or absolute paths); symlinks are hashed by their target text, never followed.
Node hashes are sha256 over canonical JSON (sorted keys, no whitespace, no NaN).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

_CHUNK = 1 << 20
_HEX = frozenset("0123456789abcdef")


def _excluded(relpath: str, patterns: tuple[str, ...]) -> bool:
    """A pattern matches the whole relative path or any one of its components."""
    parts = relpath.split("/")
    return any(
        fnmatch.fnmatchcase(relpath, pattern)
        or any(fnmatch.fnmatchcase(part, pattern) for part in parts)
        for pattern in patterns
    )


def file_sha256(path: str | Path) -> str:
    """sha256 hex of one file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _record(kind: str, relpath: str, detail: str) -> bytes:
    return (json.dumps([kind, relpath, detail], ensure_ascii=False) + "\n").encode("utf-8")


def tree_entries(path: str | Path, exclude: Iterable[str] = ()) -> list[tuple[str, str, str]]:
    """The sorted ``(kind, relative path, detail)`` records ``hash_tree`` hashes.

    kind ``d`` directory (detail ""), ``f`` file (detail ``x:<sha256>`` or ``-:<sha256>`` for
    the executable bit), ``l`` symlink (detail: the link's target text).
    """
    root = Path(path)
    patterns = tuple(exclude)
    try:
        root_stat = root.lstat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"hash_tree: {root} does not exist; pass the directory or file that is copied "
            "into the build context"
        ) from None
    if not stat.S_ISDIR(root_stat.st_mode):
        return [_entry(root, root.name, root_stat)]
    entries: list[tuple[str, str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        rel_base = base.relative_to(root).as_posix()
        kept_dirs = []
        for name in dirnames:
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            if _excluded(rel, patterns):
                continue
            child = base / name
            child_stat = child.lstat()
            if stat.S_ISLNK(child_stat.st_mode):
                entries.append(_entry(child, rel, child_stat))
            else:
                entries.append(("d", rel, ""))
                kept_dirs.append(name)
        dirnames[:] = kept_dirs
        for name in filenames:
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            if _excluded(rel, patterns):
                continue
            child = base / name
            entries.append(_entry(child, rel, child.lstat()))
    entries.sort(key=lambda entry: entry[1])
    return entries


def _entry(path: Path, rel: str, st: os.stat_result) -> tuple[str, str, str]:
    if stat.S_ISLNK(st.st_mode):
        return ("l", rel, os.readlink(path))
    if stat.S_ISREG(st.st_mode):
        executable = "x" if st.st_mode & 0o111 else "-"
        return ("f", rel, f"{executable}:{file_sha256(path)}")
    raise ValueError(
        f"hash_tree: {path} is neither a file, a directory nor a symlink (a socket or fifo?); "
        "exclude it or remove it from the build context"
    )


def hash_tree(path: str | Path, exclude: Iterable[str] = ()) -> str:
    """sha256 hex of a directory (or one file): sorted relative paths, content, +x, links.

    ``exclude`` holds fnmatch patterns matched against each relative path and each of its
    components (``"__pycache__"``, ``"*.pyc"``, ``".git"``).
    """
    digest = hashlib.sha256()
    for kind, rel, detail in tree_entries(path, exclude):
        digest.update(_record(kind, rel, detail))
    return digest.hexdigest()


def _canonical_default(value: object) -> object:
    if isinstance(value, frozenset | set):
        items = [canonical_json(item) for item in value]
        return sorted(items)
    raise TypeError(
        f"node_hash: {type(value).__name__} value {value!r} has no canonical JSON form; "
        "convert it to str, int, bool, None, list or dict (paths: make them relative strings)"
    )


def canonical_json(value: object) -> str:
    """JSON with sorted keys and no whitespace; sets become sorted lists; NaN is refused."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_canonical_default,
    )


def node_hash(parts: Mapping[str, object], parent: str | None) -> str:
    """sha256 hex over the canonical JSON of a node's inputs and its parent's hash."""
    if parent is not None and not is_hash(parent):
        raise ValueError(
            f"node_hash: parent {parent!r} is not a sha256 hex digest; pass the parent node's "
            "node_hash() result (or None for a root node)"
        )
    for key in parts:
        if not isinstance(key, str):
            raise TypeError(f"node_hash: part key {key!r} is not a string; name every part")
    document = canonical_json({"parent": parent, "parts": dict(parts)})
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def is_hash(value: object) -> bool:
    """True for a 64-character lower-case sha256 hex digest."""
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def short(h: str) -> str:
    """The 12-character prefix used in image tags."""
    if not is_hash(h):
        raise ValueError(f"short: {h!r} is not a sha256 hex digest; pass a node_hash() result")
    return h[:12]
