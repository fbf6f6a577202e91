"""What a built template image must hold, from the plan and the configuration.

The image_verify role writes this as JSON for the testinfra suite
(roles/image_verify/files/test_image.py): Python, torch and CUDA of the target, the GPU's
compute capability, ComfyUI's and Manager's pins, each node with its commit, the node classes
each workflow uses and the models it names that the manifest does not provide (read here, on
the controller, so the suite's part in the container stays small), the runtime user, and the
canary secrets that must be found nowhere in the image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ansible.module_utils.config import Config
from ansible.module_utils.gpu_matrix import config_matrix, target_capability
from ansible.module_utils.manifests import parse_models
from ansible.module_utils.torch_family import TORCHAUDIO_NODES, family_for
from ansible.module_utils.workflows import missing_models, provided, workflow_needs


def node_pins(context: Path) -> list[dict[str, str]]:
    """Nodes and commits from a template context's ``nodes_manifest.txt`` (``url@commit``)."""
    path = context / "nodes_manifest.txt"
    pins = []
    for line in path.read_text("utf-8").splitlines() if path.exists() else []:
        url, _, commit = line.strip().rpartition("@")
        if url:
            name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
            pins.append({"name": name, "url": url, "commit": commit})
    return pins


def workflow_expectations(context: Path) -> dict[str, Any]:
    """The node classes each workflow uses, and the models it names that no manifest line
    provides (each naming workflow, node and file, with the fix), from a template context
    (``workflows/``, ``manifests/models_manifest.txt``, parsed by module_utils/manifests.py).
    Raises WorkflowError or ManifestError naming the file."""
    needs = workflow_needs(context / "workflows")
    manifest = context / "manifests" / "models_manifest.txt"
    names: set[str] = set()
    if manifest.exists():
        names = provided(m.dest for m in parse_models(manifest.read_text("utf-8"), str(manifest)))
    return {"workflows": needs, "missing_models": missing_models(needs, names)}


def manager_expectation(build_dir: Path, config: Config) -> dict[str, Any]:
    """How the plan decided to ship Manager (base-common's manager.json, written by
    module_utils/graph.py): ``package`` (the comfyui-manager distribution, these specs) or
    ``git`` (a clone at this commit)."""
    made = Path(build_dir) / "base-common" / "manager.json"
    if made.is_file():
        return json.loads(made.read_text("utf-8"))
    return {"mode": "git", "specs": [], "commit": config.manager.ref}


def expectations(
    config: Config,
    node: dict[str, Any],
    build_dir: Path,
    matrix_file: Path,
    python_version: str,
    canaries: list[str],
    uid: int = 1000,
    user: str = "comfy",
) -> dict[str, Any]:
    target = config.target(node["target"])
    matrix = config_matrix(config, Path(matrix_file).parents[2])  # file + inventory extras
    capability = "" if target.is_cpu else target_capability(target, matrix)
    family = family_for(target, matrix)
    # the plan named these as lost (its notes); nothing else may fail to import
    # (module_utils/comfy_log.py names them ``comfy_extras/<file>``, as TORCHAUDIO_NODES does)
    accepted = [] if family.torchaudio else list(TORCHAUDIO_NODES)
    return {
        "node": node["name"],
        "image": node["ref"],
        "target": target.name,
        "python": python_version,
        "torch": target.torch,
        "cuda": target.cuda,
        "capability": capability,
        "comfyui_commit": config.comfyui.ref,
        "manager_commit": config.manager.ref,
        "manager": manager_expectation(build_dir, config),
        "nodes": node_pins(build_dir / node["name"]),
        **workflow_expectations(build_dir / node["name"]),
        "accepted_import_failures": accepted,
        "canaries": canaries,
        "user": user,
        "uid": uid,
    }
