#!/usr/bin/python
"""Ansible module: lock a template's custom nodes to commits (git ls-remote)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nodes_lock
short_description: Resolve every node ref of a nodes manifest to a commit and write the lock
description:
  - Reads C(nodes_manifest.txt) with the project's one parser, resolves each branch or tag
    with C(git ls-remote) and writes C(nodes_manifest.lock) beside it (atomically, only when
    it changes). Full commit SHAs need no network.
  - The build uses the lock; a branch without a lock entry fails the build, not this module.
  - Supports check mode and diff mode.
options:
  manifest:
    description: Path of the nodes manifest.
    type: path
    required: true
author: aiclipse
"""

EXAMPLES = r"""
- name: Lock the nodes of sd15-basic
  nodes_lock:
    manifest: templates/sd15-basic/nodes_manifest.txt
"""

RETURN = r"""
lock_file:
  description: The lock file's path.
  returned: always
  type: str
  sample: templates/sd15-basic/nodes_manifest.lock
nodes:
  description: Each node with its ref and the commit it resolved to.
  returned: always
  type: list
  elements: dict
  sample:
    - url: https://github.com/rgthree/rgthree-comfy
      ref: main
      commit: dbc5fa5e2f1c4cb8e5dbc5fa5e2f1c4cb8e5dbc5
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.manifests import ManifestError, lock_nodes


def main() -> None:
    module = AnsibleModule(
        argument_spec={"manifest": {"type": "path", "required": True}},
        supports_check_mode=True,
    )
    manifest = module.params["manifest"]
    lock = Path(manifest).with_suffix(".lock")
    before = lock.read_text("utf-8") if lock.exists() else ""
    try:
        result = lock_nodes(manifest, write=not module.check_mode)
    except ManifestError as err:
        module.fail_json(msg=str(err))
    module.exit_json(
        changed=result.changed,
        lock_file=result.path,
        nodes=[
            {"url": item.url, "ref": item.node.ref or "HEAD", "commit": item.commit}
            for item in result.nodes
        ],
        diff={
            "before": before,
            "after": result.text,
            "before_header": result.path,
            "after_header": result.path,
        },
    )


if __name__ == "__main__":
    main()
