#!/usr/bin/python
"""Ansible module: build a plan's bake file with docker buildx bake; report per target."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: buildx_bake
short_description: Build the targets of a buildx bake file and report each target's outcome
description:
  - Runs C(docker buildx bake --progress=plain --metadata-file ...) for every target of the
    bake file written by M(layer_graph) (the stale nodes only).
  - Where the builder has named contexts (BuildKit >= 0.10) one call builds every target;
    otherwise one call per C(level<N>) group, parents first.
  - Each call streams its output into a log file of its own under I(log_dir). When a call
    fails, its targets are built again one at a time, so every target ends C(built),
    C(failed) (with the tail of its log) or C(skipped) (an ancestor failed). The module itself
    does not fail because a target failed; the caller decides.
  - A bake file without targets means no call at all.
  - Targets with a C(network) (bake files cannot carry one, buildx drops it) are built with
    C(docker buildx build) and the same inputs instead, one at a time, parents first.
  - In check mode nothing runs; every target is reported C(planned).
options:
  bake_file:
    description: The bake file (JSON). Empty (the plan in check mode) means nothing to build.
    type: path
    default: ""
  nodes:
    description: The plan's nodes (M(layer_graph)'s C(nodes)); cached and skipped nodes are
      reported as the plan says, stale ones with what their build did.
    type: list
    elements: dict
    default: []
  log_dir:
    description: Folder for this run's logs and metadata files (created).
    type: path
    required: true
  named_contexts:
    description: The builder resolves C(contexts) (BuildKit >= 0.10); build in one call.
    type: bool
    default: false
  buildx_version:
    description: buildx's version; C(--allow) is passed only from 0.20 on (bake entitlements).
    type: str
    default: ""
  allow:
    description: Extra C(--allow) entitlements, besides those the bake file needs.
    type: list
    elements: str
    default: []
  builder:
    description: buildx builder name; empty for the current one.
    type: str
    default: ""
  timeout:
    description: Seconds one bake call may run.
    type: int
    default: 7200
  tail_lines:
    description: Lines of a failed target's log kept in its result.
    type: int
    default: 40
  only:
    description: This builder's share of the plan (node names, M(fleet_plan)'s C(rest) or
      C(common)); the bake file is cut to it (written under I(log_dir)) and only these nodes
      are reported. Omitted, every target is built.
    type: list
    elements: str
  failed_elsewhere:
    description: Node -> why, for nodes another builder failed to make; a node of the share
      whose parent is one of them is skipped with that reason.
    type: dict
    default: {}
author: aiclipse
"""

EXAMPLES = r"""
- name: Build the stale images
  buildx_bake:
    bake_file: "{{ aiclipse_plan.bake_file }}"
    log_dir: /srv/aiclipse/build/logs/20250101T000000
    named_contexts: "{{ ansible_facts.builder_host_buildx.copy_link }}"
    buildx_version: "{{ ansible_facts.builder_host_buildx.buildx_version }}"
  register: bake
"""

RETURN = r"""
outcomes:
  description: Node name -> outcome (target, status, reason, image_id, digest, tags, log,
    tail, cause, seconds, level, parent). Status is one of built, failed, skipped (an
    ancestor failed, or the plan skipped it), cached (its hash tag is in the registry),
    planned (check mode). A failed target's C(reason) names the failing step, its exit code
    and its last output line; C(cause) holds that step's last output lines (timestamps
    dropped), C(tail) the raw end of its log.
  returned: always
  type: dict
  sample:
    tiny-cpu:
      status: built
      image_id: "sha256:f81d2a9b6e02..."
      digest: ""
      tags: ["127.0.0.1:5000/aiclipse/comfyui:tiny-cpu-1a2b3c4d5e6f"]
      log: /srv/aiclipse/build/logs/20250101T000000/level3.log
built:
  description: Nodes built.
  returned: always
  type: list
  elements: str
failed_nodes:
  description: Nodes whose build failed.
  returned: always
  type: list
  elements: str
skipped_nodes:
  description: Nodes not built because an ancestor failed.
  returned: always
  type: list
  elements: str
cached:
  description: Nodes whose hash tag the registry already holds (not built).
  returned: always
  type: list
  elements: str
calls:
  description: Every bake call (targets, argv, log, rc, seconds); empty when nothing was stale.
  returned: always
  type: list
  elements: dict
table:
  description: One line per node (status, node, image, seconds, why), for people.
  returned: always
  type: list
  elements: str
"""

import json
from pathlib import Path

from ansible.module_utils.bake_metadata import MetadataError
from ansible.module_utils.bake_run import Baker, entitlements, share
from ansible.module_utils.basic import AnsibleModule


def _check_mode_targets(nodes: list[dict]) -> dict:
    """Stand-in bake targets for the stale nodes (check mode writes no bake file)."""
    return {
        n["name"]: {"tags": [n.get("ref", "")], "labels": {"io.aiclipse.node": n["name"]}}
        for n in nodes
        if n.get("status") == "stale"
    }


def _blocked(nodes: list[dict], failed: dict) -> dict[str, str]:
    """Node -> why it cannot build: an ancestor another builder failed to make."""
    parents = {n.get("name"): n.get("parent") for n in nodes}
    out = {}
    for name in parents:
        parent = parents.get(name)
        while parent:
            if parent in failed:
                out[name] = f"parent {parent} {failed[parent]}"
                break
            parent = parents.get(parent)
    return out


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "bake_file": {"type": "path", "default": ""},
            "nodes": {"type": "list", "elements": "dict", "default": []},
            "log_dir": {"type": "path", "required": True},
            "named_contexts": {"type": "bool", "default": False},
            "buildx_version": {"type": "str", "default": ""},
            "allow": {"type": "list", "elements": "str", "default": []},
            "builder": {"type": "str", "default": ""},
            "timeout": {"type": "int", "default": 7200},
            "tail_lines": {"type": "int", "default": 40},
            "only": {"type": "list", "elements": "str"},
            "failed_elsewhere": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    p = module.params
    bake: dict = {"target": {}}
    if p["bake_file"]:
        try:
            bake = json.loads(Path(p["bake_file"]).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            module.fail_json(
                msg=f"{p['bake_file']}: cannot read the bake file ({err}). Fix: run the plan"
            )
    elif not module.check_mode and any(n.get("status") == "stale" for n in p["nodes"]):
        module.fail_json(msg="stale nodes but no bake_file. Fix: pass the plan's bake_file")
    else:  # check mode: the plan wrote no bake file; its stale nodes are what would build
        bake = {"target": _check_mode_targets(p["nodes"])}
    bake_file, only = p["bake_file"], p["only"]
    if only is not None:  # one builder's share: its own cut of the bake file
        bake = share(bake, only)
        if bake["target"] and not module.check_mode:
            Path(p["log_dir"]).mkdir(parents=True, exist_ok=True)
            bake_file = str(Path(p["log_dir"]) / "bake.json")
            Path(bake_file).write_text(json.dumps(bake, indent=2, sort_keys=True) + "\n")
    baker = Baker(
        bake_file,
        bake,
        Path(p["log_dir"]),
        named_contexts=p["named_contexts"],
        allow=entitlements(bake, p["buildx_version"], p["allow"]),
        builder=p["builder"],
        timeout=p["timeout"],
        tail_lines=p["tail_lines"],
        blocked=_blocked(p["nodes"], p["failed_elsewhere"]),
        only=only,
    )
    try:
        report = baker.run(check_mode=module.check_mode, plan_nodes=p["nodes"])
    except MetadataError as err:
        module.fail_json(msg=str(err))
    out = report.as_dict()
    # `failed` and `skipped` in a result are Ansible's own: a list there fails or skips the task
    out["failed_nodes"], out["skipped_nodes"] = out.pop("failed"), out.pop("skipped")
    module.exit_json(changed=bool(out["built"]), **out)


if __name__ == "__main__":
    main()
