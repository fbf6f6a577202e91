#!/usr/bin/python
"""Ansible module: place the plan's images on the ready builders of the fleet."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_plan
short_description: Place each image of a plan on a builder (GPU labels, longest first)
description:
  - Splits the plan into one unit per GPU target (C(base-<gpu>) and its template images) and
    places each unit on a ready builder whose C(builder_gpus) carries that GPU (any builder
    for C(cpu)), longest first onto the least-loaded one, so the slowest builder finishes
    soonest (module_utils/fleet.py).
  - C(base-common) goes to one builder; when it is stale and other builders have work it is
    built and pushed first (C(common)), and the others pull it from the shared registry.
  - A unit's cost is the seconds its stale nodes took in the previous report where it has
    them, else a weight by kind.
  - Reads only; never changes anything.
options:
  nodes:
    description: The plan's nodes (M(layer_graph)'s C(nodes)).
    type: list
    elements: dict
    required: true
  builders:
    description: The ready builders in inventory order, each C(name) and C(gpus) (labels).
    type: list
    elements: dict
    required: true
  inventory:
    description: Every builder of the inventory; those not in I(builders) are reported.
    type: list
    elements: str
    default: []
  previous_report:
    description: A report.json of an earlier run; its build times weigh the units.
    type: path
    default: ""
  any_builder:
    description: Targets every builder can check (they need no GPU).
    type: list
    elements: str
    default: [cpu]
author:
  - aiclipse-comfy
"""

EXAMPLES = r"""
- name: Place the images on the builders
  fleet_plan:
    nodes: "{{ aiclipse_plan.nodes }}"
    builders: [{name: gpu-a, gpus: [rtx4090]}, {name: gpu-b, gpus: [h100]}]
    inventory: "{{ groups['builders'] }}"
    previous_report: reports/latest/report.json
  register: aiclipse_fleet
"""

RETURN = r"""
builder_of:
  description: Node -> the builder that builds (or, cached, would build) it.
  returned: always
  type: dict
common:
  description: Builder -> nodes built and pushed before every other build (base-common).
  returned: always
  type: dict
rest:
  description: Builder -> the nodes it builds after the common phase.
  returned: always
  type: dict
loads:
  description: Builder -> the cost placed on it (seconds, or weights where none were timed).
  returned: always
  type: dict
gpu_checks:
  description: GPU target -> whether a builder carrying that GPU checks it.
  returned: always
  type: dict
notes:
  description: Builders that are not ready and GPUs that no ready builder carries.
  returned: always
  type: list
  elements: str
table:
  description: One line per builder, its load and its nodes.
  returned: always
  type: list
  elements: str
"""

import json
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fleet import Builder, FleetError, assign, unready_notes


def _seconds(path: str) -> dict[str, float]:
    """Build seconds per node from an earlier report; nothing when it cannot be read."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {
        item["node"]: float(item.get("build_seconds") or 0.0)
        for item in data.get("images", [])
        if isinstance(item, dict) and item.get("node") and item.get("build_seconds")
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "nodes": {"type": "list", "elements": "dict", "required": True},
            "builders": {"type": "list", "elements": "dict", "required": True},
            "inventory": {"type": "list", "elements": "str", "default": []},
            "previous_report": {"type": "path", "default": ""},
            "any_builder": {"type": "list", "elements": "str", "default": ["cpu"]},
        },
        supports_check_mode=True,
    )
    p = module.params
    builders = [
        Builder(str(b["name"]), tuple(str(g) for g in b.get("gpus") or ())) for b in p["builders"]
    ]
    try:
        placement = assign(
            p["nodes"], builders, _seconds(p["previous_report"]), tuple(p["any_builder"])
        )
    except FleetError as err:
        module.fail_json(msg=str(err), notes=unready_notes(p["inventory"], []))
    result = placement.as_dict()
    result["notes"] = unready_notes(p["inventory"], [b.name for b in builders]) + result["notes"]
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
