#!/usr/bin/python
"""Ansible module: write what a built image must hold, for the testinfra suite."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_expect
short_description: Write the expectations of one built template image as JSON
description:
  - From the configuration and the plan's node, writes the Python, torch and CUDA version of
    the target, the GPU's compute capability, ComfyUI's and Manager's pinned commits, each
    custom node with its commit, the node classes and model files each workflow of the
    template uses (C(workflows)) with the models its manifest does not provide
    (C(missing_models)), the ComfyUI files allowed to fail to import
    (C(accepted_import_failures)), the runtime user, and the canary secrets that must not be
    in the image.
  - The file is written mode 0600 (canaries). Supports check mode (nothing written).
options:
  config:
    description: The configuration variables (as for C(layer_graph)).
    type: dict
    required: true
  node:
    description: The plan's node (an element of C(layer_graph)'s C(nodes)).
    type: dict
    required: true
  build_dir:
    description: The plan's build folder (holds each node's context).
    type: path
    required: true
  repo_root:
    description: The project's root (the GPU matrix data).
    type: path
    required: true
  python_version:
    description: Python version of the images.
    type: str
    default: "3.11"
  canaries:
    description: Strings that must be found nowhere in the image.
    type: list
    elements: str
    default: []
    no_log: true
  dest:
    description: Where to write the JSON.
    type: path
    required: true
author: aiclipse
"""

EXAMPLES = r"""
- name: Write what sd15-basic-cpu must hold
  image_expect:
    config: "{{ aiclipse_config }}"
    node: "{{ item }}"
    build_dir: "{{ playbook_dir }}/build"
    repo_root: "{{ playbook_dir }}"
    dest: "{{ playbook_dir }}/build/verify/{{ item.name }}.json"
"""

RETURN = r"""
expect:
  description: The expectations, canaries left out.
  returned: always
  type: dict
  sample:
    node: sd15-basic-cpu
    torch: "2.13.0"
    cuda: cpu
    capability: ""
    workflows:
      sd15.json:
        classes: [CheckpointLoaderSimple, KSampler]
        models: [["4", CheckpointLoaderSimple, v1-5-pruned-emaonly-fp16.safetensors]]
    missing_models: []
    accepted_import_failures: []
"""

import json
import os
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.config import ConfigError, load_config
from ansible.module_utils.expectations import expectations
from ansible.module_utils.gpu_matrix import IncompatibleTarget
from ansible.module_utils.manifests import ManifestError
from ansible.module_utils.workflows import WorkflowError


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "dict", "required": True},
            "node": {"type": "dict", "required": True},
            "build_dir": {"type": "path", "required": True},
            "repo_root": {"type": "path", "required": True},
            "python_version": {"type": "str", "default": "3.11"},
            "canaries": {"type": "list", "elements": "str", "default": [], "no_log": True},
            "dest": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        expect = expectations(
            load_config(p["config"]),
            p["node"],
            Path(p["build_dir"]),
            Path(p["repo_root"]) / "playbooks" / "vars" / "cuda_torch_matrix.yml",
            p["python_version"],
            p["canaries"],
        )
    except (ConfigError, IncompatibleTarget, ManifestError, WorkflowError) as err:
        module.fail_json(msg=str(err))
    text = json.dumps(expect, indent=2, sort_keys=True) + "\n"
    dest = Path(p["dest"])
    changed = not dest.exists() or dest.read_text("utf-8") != text
    if changed and not module.check_mode:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    module.exit_json(changed=changed, expect={k: v for k, v in expect.items() if k != "canaries"})


if __name__ == "__main__":
    main()
