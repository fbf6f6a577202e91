#!/usr/bin/python
"""Ansible module: move ComfyUI's and ComfyUI-Manager's pins to what their `follow` names."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: source_lock
short_description: Resolve the moving refs of git sources (a branch, a tag, a release line)
description:
  - For each source with a C(follow) key (a branch, a tag, or a tag glob such as C(v*) for
    the release line, meaning the highest version that matches), asks the repository (C(git
    ls-remote)) for the commit it names now and returns the source with C(ref) set to it.
    Sources without C(follow) come back as they are.
  - A source that cannot be reached keeps its pinned C(ref) and is listed in C(errors), so
    the night goes on with the last known commit and its report says what failed.
  - Reads only; C(changed) says whether a pin moved.
options:
  sources:
    description: Name -> source (C(repo), C(ref), optional C(follow), other keys kept).
    type: dict
    required: true
author:
  - aiclipse-comfy
"""

EXAMPLES = r"""
- name: Follow ComfyUI's release line and Manager's main branch
  source_lock:
    sources:
      comfyui: "{{ comfyui }}"
      manager: "{{ manager }}"
  register: nightly_sources
"""

RETURN = r"""
sources:
  description: The sources with C(ref) set to the commit their C(follow) names now.
  returned: always
  type: dict
moved:
  description: One line per source whose commit moved (name, followed ref, old and new ref).
  returned: always
  type: list
  elements: str
errors:
  description: Sources that could not be resolved, why, and the fix (their ref is kept).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.gitsource import GitSourceError, follow


def main() -> None:
    module = AnsibleModule(
        argument_spec={"sources": {"type": "dict", "required": True}},
        supports_check_mode=True,
    )
    out, moved, errors = {}, [], []
    for name, source in module.params["sources"].items():
        source = dict(source or {})
        pattern = source.get("follow") or ""
        if pattern and source.get("repo"):
            try:
                ref, commit = follow(source["repo"], pattern, f"{name}.follow")
            except GitSourceError as err:
                errors.append(str(err))
            else:
                if commit != source.get("ref"):
                    moved.append(
                        f"{name}: {pattern} is {ref} at {commit} (was {source.get('ref')})"
                    )
                source["ref"] = commit
        out[name] = source
    module.exit_json(changed=bool(moved), sources=out, moved=moved, errors=errors)


if __name__ == "__main__":
    main()
