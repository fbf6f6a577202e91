#!/usr/bin/python
"""Ansible module: ask a registry whether an image reference exists and what its digest is."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_image
short_description: Ask a Docker registry whether an image tag exists, and its digest
description:
  - Sends one C(HEAD /v2/<repository>/manifests/<reference>) to the registry (plain HTTP for
    loopback and I(insecure) registries, HTTPS otherwise), answering Basic and Bearer
    challenges with the given credentials.
  - Read-only; supports check mode.
options:
  ref:
    description: Fully qualified reference, C(host[:port]/repository[:tag|@digest]).
    type: str
    required: true
  username:
    description: Registry user name.
    type: str
    default: ""
  password:
    description: Registry password or token.
    type: str
    default: ""
    no_log: true
  insecure:
    description: Registries (host:port) spoken to over plain HTTP besides loopback.
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds per request.
    type: float
    default: 10
author: aiclipse
"""

EXAMPLES = r"""
- name: Ask whether the OS base tag is pushed
  registry_image:
    ref: 127.0.0.1:5000/aiclipse/os-base:bookworm-0123456789ab
  register: os_base_remote
"""

RETURN = r"""
exists:
  description: Whether the registry has a manifest for the reference.
  returned: always
  type: bool
  sample: true
digest:
  description: The manifest digest the registry reports (Docker-Content-Digest), or empty.
  returned: always
  type: str
  sample: sha256:4f6f0c1e3c1d1f0b2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.registry import Credentials, Registry, RegistryError, parse_ref


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "ref": {"type": "str", "required": True},
            "username": {"type": "str", "default": ""},
            "password": {"type": "str", "default": "", "no_log": True},
            "insecure": {"type": "list", "elements": "str", "default": []},
            "timeout": {"type": "float", "default": 10},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        ref = parse_ref(p["ref"])
        reg = Registry(
            ref.registry,
            Credentials(p["username"], p["password"]),
            tuple(p["insecure"]),
            p["timeout"],
        )
        digest = reg.manifest_digest(ref.repository, ref.reference)
    except RegistryError as err:
        module.fail_json(msg=str(err))
    module.exit_json(changed=False, exists=digest is not None, digest=digest or "")


if __name__ == "__main__":
    main()
