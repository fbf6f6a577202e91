#!/usr/bin/python
"""Ansible module: push verified images by hash tag, confirm digests, move release tags."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_push
short_description: Push built images, confirm the registry's digest, then move their tags
description:
  - For each image, C(docker push) of its hash tag (retried on failure, refused at once on
    401/403 naming the credential variables), then the registry's C(Docker-Content-Digest)
    must equal the pushed digest (REG-1) before the release tags are moved by manifest
    (REG-2). One image failing does not stop the others.
  - Counts the compressed bytes actually uploaded (layers the registry did not have).
  - In check mode nothing is pushed.
options:
  images:
    description: Images to push, each a dict with C(ref) (the hash tag) and C(release_tags)
      (other keys, such as the rest of a plan node, are ignored).
    type: list
    elements: dict
    required: true
  username:
    description: Registry user for the tag moves.
    type: str
    default: ""
  password:
    description: Registry password or token.
    type: str
    default: ""
    no_log: true
  insecure:
    description: Registries spoken to over plain HTTP besides loopback.
    type: list
    elements: str
    default: []
  attempts:
    description: docker push attempts per image.
    type: int
    default: 3
author: aiclipse
"""

EXAMPLES = r"""
- name: Push what passed verification
  image_push:
    images:
      - ref: 127.0.0.1:5000/aiclipse/comfyui:sd15-basic-cpu-0123456789ab
        release_tags: [sd15-basic-cpu]
"""

RETURN = r"""
images:
  description: Per image ref its digest, bytes and layers pushed, tags moved, or the error.
  returned: always
  type: dict
failed_images:
  description: Refs that failed to push or to move their tags.
  returned: always
  type: list
  elements: str
bytes_pushed:
  description: Compressed bytes uploaded in all.
  returned: always
  type: int
"""

import dataclasses
import json
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.push import PushError, push
from ansible.module_utils.registry import Credentials, RegistryError, Writer, parse_ref


def run(argv):
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "images": {"type": "list", "elements": "dict", "required": True},
            "username": {"type": "str", "default": ""},
            "password": {"type": "str", "default": "", "no_log": True},
            "insecure": {"type": "list", "elements": "str", "default": []},
            "attempts": {"type": "int", "default": 3},
        },
        supports_check_mode=True,
    )
    p = module.params
    if module.check_mode:
        module.exit_json(changed=bool(p["images"]), images={}, failed_images=[], bytes_pushed=0)
    creds = Credentials(p["username"], p["password"])
    results, failed, writers = {}, [], {}
    for image in p["images"]:
        ref = image["ref"]
        start = time.monotonic()
        try:
            registry = parse_ref(ref).registry
            if registry not in writers:
                writers[registry] = Writer(registry, creds, tuple(p["insecure"]))
            status, out = run(
                ["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", ref]
            )
            if status != 0:
                raise PushError(f"{ref} is not in the engine: {out.strip()}")
            result = push(
                ref, json.loads(out), image.get("release_tags", []), writers[registry], run,
                p["attempts"],
            )  # fmt: skip
            results[ref] = dict(dataclasses.asdict(result), status="pushed")
        except (PushError, RegistryError) as err:
            failed.append(ref)
            results[ref] = {"ref": ref, "status": "failed", "error": str(err)}
        results[ref]["seconds"] = round(time.monotonic() - start, 1)
    module.exit_json(
        changed=any(r["status"] == "pushed" for r in results.values()),
        images=results,
        failed_images=failed,  # not `failed`: Ansible would fail the task on it
        bytes_pushed=sum(r.get("bytes_pushed", 0) for r in results.values()),
    )


if __name__ == "__main__":
    main()
