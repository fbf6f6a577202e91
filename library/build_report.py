#!/usr/bin/python
"""Ansible module: write the build report (JSON, table, SVG chart of layer sizes)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: build_report
short_description: Summarise a build.yml run per image as JSON, a table and an SVG chart
description:
  - Joins the plan with what image_build, image_verify and image_push returned into one row
    per image (built, cached, failed or skipped, and why; digest; build and push time; bytes
    pushed).
  - Reads each published image's manifest and config from the registry to give the
    compressed size of every layer and the node whose build added it.
  - Writes C(report.json) and C(layers.svg) into a new folder under I(reports_dir) named
    after I(stamp), and points C(latest) at it. In check mode nothing is written.
options:
  plan_nodes:
    description: The plan's nodes (C(layer_graph)'s C(nodes)).
    type: list
    elements: dict
    required: true
  build_results:
    description: image_build's per-node results (C(image_build_results)).
    type: dict
    default: {}
  verify_results:
    description: image_verify's per-node results (C(image_verify_results)).
    type: dict
    default: {}
  push_results:
    description: image_push's per-reference results (C(image_push_results)).
    type: dict
    default: {}
  reports_dir:
    description: Folder that receives one sub-folder per run.
    type: path
    required: true
  stamp:
    description: Name of this run's folder (a UTC time such as C(20261123T020000Z)).
    type: str
    required: true
  meta:
    description: Extra facts recorded at the top of the JSON (templates, targets, host).
    type: dict
    default: {}
  layers:
    description: Read layer sizes from the registry (off, the report has no sizes).
    type: bool
    default: true
  username:
    description: Registry user for reading manifests.
    type: str
    default: ""
  password:
    description: Registry password or token (never logged).
    type: str
    default: ""
  insecure:
    description: Registries spoken to over plain HTTP besides loopback.
    type: list
    elements: str
    default: []
  builder_of:
    description: Node -> the builder the plan placed it on (M(fleet_plan)'s C(builder_of)).
    type: dict
    default: {}
  reported:
    description: The builders whose results came back; a stale image placed on another one
      is reported failed, naming its builder. Omitted, no such check.
    type: list
    elements: str
  intent_fails:
    description: Images the plan left out on purpose (C(kind_of_skip) C(intent)) fail the
      run too (nightly.yml); otherwise they are notes. Images skipped for a failure (an
      unreachable source or index, a parent that failed) always fail it.
    type: bool
    default: false
author:
  - aiclipse-comfy
"""

EXAMPLES = r"""
- name: Write the report
  build_report:
    plan_nodes: "{{ aiclipse_plan.nodes }}"
    build_results: "{{ hostvars[groups['builders'][0]].image_build_results | default({}) }}"
    verify_results: "{{ hostvars[groups['builders'][0]].image_verify_results | default({}) }}"
    push_results: "{{ hostvars[groups['builders'][0]].image_push_results | default({}) }}"
    reports_dir: "{{ playbook_dir }}/reports"
    stamp: "{{ now(utc=true, fmt='%Y%m%dT%H%M%SZ') }}"
  register: aiclipse_report
"""

RETURN = r"""
path:
  description: The report folder of this run (empty in check mode).
  returned: always
  type: str
  sample: /srv/aiclipse/reports/20261123T020000Z
table:
  description: One line per image (status, digest, size, own size, times, bytes pushed, why).
  returned: always
  type: str
summary:
  description: Image names per status, bytes pushed, times, summed and unique layer bytes,
    and C(ok) (false when an image failed).
  returned: always
  type: dict
  sample: {"built": ["tiny-cpu"], "cached": [], "failed": [], "bytes_pushed": 1024, "ok": true}
failures:
  description: One line per image that fails the run (failed, or skipped for a failure),
    naming why; a failed build's cause follows as indented C(<image>| <line>) entries (the
    last lines of its failing step).
  returned: always
  type: list
  elements: str
  sample:
    - "tiny-cpu: [tiny-cpu 3/5] RUN python install_nodes.py ... failed (exit code 1): ..."
    - "  tiny-cpu| install_nodes: ComfyUI-Foo: pip install -r requirements.txt failed"
    - "base-common: skipped: comfyui.repo: cannot fetch https://github.com/... (...)"
notes:
  description: Images left out on purpose (not failures), with why.
  returned: always
  type: list
  elements: str
warnings_layers:
  description: Images whose layers could not be read from the registry, and why.
  returned: always
  type: list
  elements: str
"""

import json
import os
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.registry import Credentials, RegistryError, Writer, parse_ref
from ansible.module_utils.report import (
    attribute_layers,
    document,
    failures,
    notes,
    registry_layers,
    rows,
    svg,
    table,
)


def new_folder(folder: Path) -> Path:
    """``folder``, or ``folder-2``, ``-3``... when a run of the same second has it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = folder, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = folder.with_name(f"{folder.name}-{n}")


def write(folder: Path, doc: dict, chart: str) -> None:
    (folder / "report.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    (folder / "layers.svg").write_text(chart)
    latest = folder.parent / "latest"
    tmp = folder.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(folder.name)
    tmp.replace(latest)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "plan_nodes": {"type": "list", "elements": "dict", "required": True},
            "build_results": {"type": "dict", "default": {}},
            "verify_results": {"type": "dict", "default": {}},
            "push_results": {"type": "dict", "default": {}},
            "reports_dir": {"type": "path", "required": True},
            "stamp": {"type": "str", "required": True},
            "meta": {"type": "dict", "default": {}},
            "layers": {"type": "bool", "default": True},
            "username": {"type": "str", "default": ""},
            "password": {"type": "str", "default": "", "no_log": True},
            "insecure": {"type": "list", "elements": "str", "default": []},
            "builder_of": {"type": "dict", "default": {}},
            "reported": {"type": "list", "elements": "str"},
            "intent_fails": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    report = rows(
        p["plan_nodes"],
        p["build_results"],
        p["verify_results"],
        p["push_results"],
        p["builder_of"],
        p["reported"],
    )
    missing = []
    if p["layers"]:
        creds = Credentials(p["username"], p["password"])
        clients: dict[str, Writer] = {}
        for row in report:
            published = row.pushed or row.status in ("cached", "external")
            if not published or not row.ref:
                continue
            try:
                registry = parse_ref(row.ref).registry
                client = clients.setdefault(
                    registry, Writer(registry, creds, tuple(p["insecure"]), attempts=3)
                )
                row.layers = registry_layers(row.ref, client)
            except (RegistryError, ValueError, KeyError) as err:
                missing.append(f"{row.node}: {err}")
        attribute_layers(report, {n["name"]: n.get("parent") for n in p["plan_nodes"]})
    doc = document(report, {**p["meta"], "stamp": p["stamp"], "layers_unread": missing})
    folder = Path(p["reports_dir"]) / p["stamp"]
    if not module.check_mode:
        try:
            folder = new_folder(folder)
            doc["stamp"] = folder.name
            write(folder, doc, svg(report, f"Compressed layer sizes per image, {p['stamp']}"))
        except OSError as err:
            module.fail_json(
                msg=f"cannot write the report into {folder}: {err}; set aiclipse_reports_dir "
                "to a writable folder with free space"
            )
    module.exit_json(
        changed=not module.check_mode,
        path="" if module.check_mode else str(folder),
        table=table(report),
        summary=doc["summary"],
        failures=failures(report, p["intent_fails"]),
        notes=notes(report, p["intent_fails"]),
        warnings_layers=missing,
    )


if __name__ == "__main__":
    main()
