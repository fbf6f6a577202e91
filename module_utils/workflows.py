"""What a ComfyUI workflow needs from an image: node classes and model files.

Both formats ComfyUI writes are read: the UI format (``{"nodes": [{"type": ...,
"widgets_values": ...}], "links": ...}``, subgraphs under ``definitions.subgraphs``) and the
API format (``{"<id>": {"class_type": ..., "inputs": {...}}}``). Frontend-only node types
(reroutes, notes, primitives, groups) have no server class and are not asked of
``/object_info``. A model file is any string input ending in one of ComfyUI's model
extensions (``folder_paths.supported_pt_extensions`` plus ``.gguf``), named as ComfyUI's
loaders list it: relative to its model folder (``SD1.5/model.safetensors``).

The controller reads the workflows (module_utils/expectations.py writes the result into the
image's expectations); ComfyUI's log is read by module_utils/comfy_log.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Node types the frontend draws but the server has no class for (ComfyUI's own, and the
# virtual nodes of rgthree-comfy and KJNodes: ``isVirtualNode`` in their web code).
FRONTEND_ONLY = frozenset(
    {"Reroute", "Note", "MarkdownNote", "PrimitiveNode", "Group", "SetNode", "GetNode",
     *(f"{name} (rgthree)" for name in (
         "Reroute", "Label", "Bookmark", "Fast Muter", "Fast Bypasser", "Fast Groups Muter",
         "Fast Groups Bypasser", "Fast Actions Button", "Mute / Bypass Relay",
         "Mute / Bypass Repeater", "Random Unmuter", "Node Collector"))}
)  # fmt: skip
MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf")


class WorkflowError(ValueError):
    """A workflow file that cannot be read (the message names it and the fix)."""


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


def nodes_of(data: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(node id, class, its inputs/widget values) for every node of a workflow, either format
    (a UI workflow's subgraph nodes included; the subgraph instances themselves left out)."""
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
            out.append((str(node.get("id", "?")), kind, node.get("widgets_values")))
        return out
    return [
        (str(key), str(node["class_type"]), node.get("inputs"))
        for key, node in data.items()
        if isinstance(node, Mapping) and "class_type" in node
    ]


def node_classes(data: Mapping[str, Any]) -> list[str]:
    """Server node classes a workflow uses (frontend-only types left out), sorted."""
    return sorted({kind for _, kind, _ in nodes_of(data) if kind and kind not in FRONTEND_ONLY})


def model_files(data: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(node id, node class, file name) for every model file a workflow names, in order
    (frontend-only nodes left out: a note's text is no model)."""
    found = []
    for key, kind, values in nodes_of(data):
        if kind in FRONTEND_ONLY:
            continue
        for text in _strings(values):
            text = text.strip()
            if text.lower().endswith(MODEL_EXTENSIONS) and "\n" not in text and " " not in text:
                found.append((key, kind, text.replace("\\", "/")))
    return found


def workflow_needs(folder: Path) -> dict[str, dict[str, Any]]:
    """``{file: {"classes": [...], "models": [[node id, class, name], ...]}}`` for
    ``folder/*.json``; a file that is no JSON object raises WorkflowError naming it."""
    out = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise WorkflowError(
                f"{path}: not a workflow: {err}. Fix: save it from ComfyUI again"
            ) from None
        if not isinstance(data, Mapping):
            raise WorkflowError(
                f"{path}: not a workflow (a JSON {type(data).__name__}, not an object). "
                "Fix: save it from ComfyUI (Workflow > Save, or Export (API))"
            )
        out[path.name] = {
            "classes": node_classes(data),
            "models": [list(item) for item in model_files(data)],
        }
    return out


def provided(dests: Iterable[str]) -> set[str]:
    """The names ComfyUI's loaders list for manifest destinations (``folder/sub/name``): the
    path under the model folder (``sub/name``), as a workflow names it."""
    return {dest.split("/", 1)[1] for dest in dests if "/" in dest}


def missing_models(needs: Mapping[str, Mapping[str, Any]], names: set[str]) -> list[str]:
    """Each model a workflow names that the models manifest does not provide (``names``: from
    ``provided``), naming the workflow, the node and the file, with the fix."""
    missing = []
    for workflow, need in needs.items():
        for key, kind, name in need["models"]:
            if name not in names:
                missing.append(
                    f"{workflow}: node {key} ({kind}) names {name}, which models_manifest.txt "
                    f"does not provide. Fix: add a line for {name} to the template's "
                    "models_manifest.txt, or correct the name in the workflow"
                )
    return missing
