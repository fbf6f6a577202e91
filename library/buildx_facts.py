#!/usr/bin/python
"""Ansible module: gather the buildx builder's BuildKit version and capabilities as facts."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: buildx_facts
short_description: Report BuildKit's version and capabilities of a buildx builder as facts
description:
  - Runs C(docker buildx inspect --bootstrap), C(docker buildx version) and C(docker version)
    and sets the fact C(builder_host_buildx) with the driver, versions and what the builder can
    do (cache export types, C(COPY --link), attestations).
  - Read-only; supports check mode.
options:
  builder:
    description: Builder name; empty for the current context's builder.
    type: str
    default: ""
author: aiclipse
"""

EXAMPLES = r"""
- name: Gather what the builder can do
  buildx_facts:

- name: Use registry cache only where the builder can export it
  ansible.builtin.debug:
    msg: "{{ 'registry' in ansible_facts.builder_host_buildx.cache_export }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts set by the module.
  returned: always
  type: complex
  contains:
    builder_host_buildx:
      description: Driver, versions and capabilities.
      type: dict
      returned: always
      sample:
        name: default
        driver: docker
        buildkit_version: v0.8.3
        buildx_version: 0.13.1+ds1
        engine_version: 20.10.24+dfsg1
        cache_export: [inline]
        copy_link: false
        attestations: false
        platforms: [linux/amd64]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.buildx import capabilities


def main() -> None:
    module = AnsibleModule(
        argument_spec={"builder": {"type": "str", "default": ""}},
        supports_check_mode=True,
    )
    inspect = ["docker", "buildx", "inspect", "--bootstrap"]
    if module.params["builder"]:
        inspect.append(module.params["builder"])

    def run(argv: list[str]) -> str:
        rc, out, err = module.run_command(argv)
        if rc != 0:
            module.fail_json(msg=f"`{' '.join(argv)}` failed ({rc}): {err.strip()}")
        return out

    caps = capabilities(
        run(inspect),
        run(["docker", "buildx", "version"]),
        run(["docker", "version", "--format", "{{.Server.Version}}"]),
        "io.containerd.snapshotter"
        in run(["docker", "info", "--format", "{{json .DriverStatus}}"]),
    )
    module.exit_json(changed=False, ansible_facts={"builder_host_buildx": caps.as_facts()})


if __name__ == "__main__":
    main()
