"""What a ComfyUI workflow needs from an image: node classes and model files.

Both formats ComfyUI writes are read: the UI format (``{"nodes": [{"type": ...,
"widgets_values": ...}], "links": ...}``, subgraphs under ``definitions.subgraphs``) and the
API format (``{"<id>": {"class_type": ..., "inputs": {...}}}``). Frontend-only node types
(reroutes, notes, primitives, groups) have no server class and are not asked of
``/object_info``. A model file is any string input ending in one of ComfyUI's model
extensions (``folder_paths.supported_pt_extensions`` plus ``.gguf``).

Also ``comfy_log_failures``: the custom nodes and built-in node files that ComfyUI's own log
says failed to import (``IMPORT FAILED``, ``Cannot import ... module for custom nodes``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FRONTEND_ONLY = frozenset(
    {"Reroute", "Note", "MarkdownNote", "PrimitiveNode", "Group", "Label (rgthree)",
     "Fast Groups Muter (rgthree)", "Fast Groups Bypasser (rgthree)", "Display Any (rgthree)"}
)  # fmt: skip
MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _ui_nodes(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    nodes = [n for n in data.get("nodes", []) if isinstance(n, Mapping)]
    for sub in (data.get("definitions") or {}).get("subgraphs", []) or []:
        if isinstance(sub, Mapping):
            nodes += _ui_nodes(sub)
    return nodes


def nodes_of(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(class, its inputs/widget values) for every node of a workflow, either format."""
    if isinstance(data.get("nodes"), list):
        subgraphs = {
            s.get("id")
            for s in (data.get("definitions") or {}).get("subgraphs", []) or []
            if isinstance(s, Mapping)
        }
        out = []
        for node in _ui_nodes(data):
            kind = str(node.get("type", ""))
            if kind in subgraphs or _UUID_RE.match(kind):
                continue  # a subgraph instance: its inner nodes are listed on their own
            out.append((kind, node.get("widgets_values")))
        return out
    return [
        (str(node["class_type"]), node.get("inputs"))
        for node in data.values()
        if isinstance(node, Mapping) and "class_type" in node
    ]


def node_classes(data: Mapping[str, Any]) -> list[str]:
    """Server node classes a workflow uses (frontend-only types left out), sorted."""
    return sorted({kind for kind, _ in nodes_of(data) if kind and kind not in FRONTEND_ONLY})


def model_files(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(node class, file name) for every model file a workflow names, in order."""
    found = []
    for kind, values in nodes_of(data):
        for text in _strings(values):
            if text.lower().endswith(MODEL_EXTENSIONS) and "\n" not in text:
                found.append((kind, text.replace("\\", "/")))
    return found


def workflow_needs(folder: Path) -> dict[str, dict[str, Any]]:
    """``{file: {"classes": [...], "models": [[class, name], ...]}}`` for ``folder/*.json``."""
    out = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = json.loads(path.read_text(encoding="utf-8"))
        out[path.name] = {
            "classes": node_classes(data),
            "models": [list(item) for item in model_files(data)],
        }
    return out


def missing_models(needs: Mapping[str, Mapping[str, Any]], manifest_names: set[str]) -> list[str]:
    """Each model a workflow names that the models manifest does not provide, with where."""
    missing = []
    for workflow, need in needs.items():
        for kind, name in need["models"]:
            if name not in manifest_names and name.rsplit("/", 1)[-1] not in manifest_names:
                missing.append(
                    f"{workflow}: {kind} names {name}, which models_manifest.txt does not "
                    f"provide. Fix: add a line for {name} to the template's models_manifest.txt"
                )
    return missing


_CUSTOM_FAILED_RE = re.compile(r"\(IMPORT FAILED\):\s*(\S.*?)\s*$")
_BUILTIN_FAILED_RE = re.compile(r"^\s*IMPORT FAILED:\s*(\S.*?)\s*$")
_CANNOT_RE = re.compile(r"Cannot import (\S+) module for custom nodes: (.*)$")
_LOADED_RE = re.compile(r"^\s*\d+\.\d+ seconds(?: \(IMPORT FAILED\))?:\s*(\S.*?)\s*$")


def comfy_log_failures(log: str) -> dict[str, str]:
    """``{path or file: the error ComfyUI gave}`` for every node that failed to import."""
    failures: dict[str, str] = {}
    errors: dict[str, str] = {}
    lines = log.splitlines()
    for line in lines:
        cannot = _CANNOT_RE.search(line)
        if cannot:
            errors[cannot.group(1)] = cannot.group(2).strip()
            failures.setdefault(cannot.group(1), cannot.group(2).strip())
            continue
        custom = _CUSTOM_FAILED_RE.search(line)
        if custom:
            path = custom.group(1)
            failures[path] = errors.get(path) or failures.get(path) or "IMPORT FAILED"
            continue
        builtin = _BUILTIN_FAILED_RE.match(line)
        if builtin:
            name = builtin.group(1)
            why = [e for path, e in errors.items() if path.rsplit("/", 1)[-1] == name]
            for path in [p for p in failures if p.rsplit("/", 1)[-1] == name and p != name]:
                del failures[path]  # named once, by ComfyUI's own summary line
            failures[name] = why[-1] if why else "IMPORT FAILED"
    return failures


def comfy_log_loaded(log: str) -> set[str]:
    """Paths ComfyUI listed in its ``Import times for custom nodes`` block (loaded or not)."""
    return {m.group(1) for line in log.splitlines() if (m := _LOADED_RE.match(line))}
