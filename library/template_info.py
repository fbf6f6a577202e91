#!/usr/bin/python
"""Ansible module: load and validate image templates before anything else runs."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: template_info
short_description: Load and validate aiclipse-comfy image templates
description:
  - Loads each named template (C(template.yml), both manifests, the workflows) with the
    project's one parser and fails with C(file:line:col) errors that name the fix. An unknown
    name fails listing the templates that exist.
  - Read-only; supports check mode.
options:
  names:
    description: Template names.
    type: list
    elements: str
    required: true
  templates_dir:
    description: Folder holding the templates.
    type: path
    required: true
author: aiclipse
"""

EXAMPLES = r"""
- name: Check the requested template before preparing anything
  template_info:
    names: [sd15-basic]
    templates_dir: "{{ playbook_dir }}/templates"
"""

RETURN = r"""
templates:
  description: Per template its description, GPU targets, model and node counts.
  returned: always
  type: list
  elements: dict
  sample:
    - name: sd15-basic
      description: Stable Diffusion 1.5
      gpu_targets: all
      models: 2
      nodes: 1
available:
  description: Every template in the folder.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.manifests import ManifestError
from ansible.module_utils.templates import TemplateError, list_templates, load_template


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "names": {"type": "list", "elements": "str", "required": True},
            "templates_dir": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    root = module.params["templates_dir"]
    try:
        loaded = [load_template(root, name) for name in module.params["names"]]
        available = list_templates(root)
    except (TemplateError, ManifestError) as err:
        module.fail_json(msg=str(err))
    module.exit_json(
        changed=False,
        available=available,
        templates=[
            {
                "name": t.name,
                "description": t.description,
                "gpu_targets": t.gpu_targets
                if isinstance(t.gpu_targets, str)
                else list(t.gpu_targets),
                "models": len(t.models),
                "nodes": len(t.nodes),
            }
            for t in loaded
        ],
    )


if __name__ == "__main__":
    main()
