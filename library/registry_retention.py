#!/usr/bin/python
"""Ansible module: delete dated tags beyond a retention count, never one not replaced."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_retention
short_description: Keep the newest N dated tags of each template image, delete the older ones
description:
  - Lists the tags of each repository through the registry API, keeps the newest I(keep)
    dated tags (C(<image>-<YYYYMMDD>)) of every image in I(images), and deletes the manifests
    of the older ones by digest.
  - A manifest is deleted only when every tag pointing at it is an old dated tag or a hash
    tag of the same image; one that a release tag, a kept dated tag or any other tag still
    names is kept, and the result says why. The newest dated tag is always kept.
  - In check mode nothing is deleted; the result lists what would be.
options:
  images:
    description: The template images whose dated tags are pruned, each a dict with C(image)
      (the repository, C(registry/path) without a tag) and C(name) (the image name, such as
      C(sd15-basic-h100)); plan nodes have both.
    type: list
    elements: dict
    required: true
  keep:
    description: Dated tags kept per image (0 keeps every one).
    type: int
    default: 14
  protected:
    description: Manifest digests never deleted (what this run pushed).
    type: list
    elements: str
    default: []
  username:
    description: Registry user.
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
author:
  - aiclipse-comfy
"""

EXAMPLES = r"""
- name: Keep two weeks of dated tags
  registry_retention:
    images:
      - {image: 127.0.0.1:5000/aiclipse/comfyui, name: sd15-basic-rtx4090}
      - {image: 127.0.0.1:5000/aiclipse/comfyui, name: sd15-basic-h100}
    keep: 14
"""

RETURN = r"""
deleted:
  description: Per repository, the digests deleted (or that would be) and the tags they took.
  returned: always
  type: dict
  sample: {"127.0.0.1:5000/aiclipse/comfyui": {"sha256:ab...": ["sd15-basic-h100-20261101"]}}
kept:
  description: Old dated tags that stay, and why.
  returned: always
  type: dict
unsupported:
  description: Repositories whose registry refuses deletes through its API (GHCR does), with
    the fix; nothing is deleted there and the run does not fail for it.
  returned: always
  type: dict
errors:
  description: Deletes that failed (the registry's answer and the fix).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.registry import Credentials, RegistryError, Writer, parse_ref
from ansible.module_utils.retention import prune


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "images": {"type": "list", "elements": "dict", "required": True},
            "keep": {"type": "int", "default": 14},
            "protected": {"type": "list", "elements": "str", "default": []},
            "username": {"type": "str", "default": ""},
            "password": {"type": "str", "default": "", "no_log": True},
            "insecure": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["keep"] < 0:
        module.fail_json(msg=f"keep is {p['keep']}: use 0 (keep every dated tag) or more")
    creds = Credentials(p["username"], p["password"])
    deleted, kept, errors, unsupported = {}, {}, [], {}
    repositories: dict[str, list[str]] = {}
    for item in p["images"]:
        if not item.get("image") or not item.get("name"):
            module.fail_json(msg=f"images: each needs image and name, got {item!r}")
        repositories.setdefault(item["image"], []).append(item["name"])
    for image, names in repositories.items():
        try:
            ref = parse_ref(f"{image}:x")
            writer = Writer(ref.registry, creds, tuple(p["insecure"]), attempts=3)
            decision, failed = prune(
                writer, ref.repository, names, p["keep"], p["protected"], module.check_mode
            )
        except RegistryError as err:
            errors.append(f"{image}: {err}")
            continue
        deleted[image] = decision.delete
        if decision.unsupported:
            unsupported[image] = decision.unsupported
            module.warn(f"{image}: {decision.unsupported}")
        kept.update({f"{image}:{tag}": why for tag, why in decision.kept.items()})
        errors += [f"{image}: {e}" for e in failed]
    module.exit_json(
        changed=any(deleted.values()) and not errors,
        deleted=deleted,
        kept=kept,
        errors=errors,
        unsupported=unsupported,
    )


if __name__ == "__main__":
    main()
