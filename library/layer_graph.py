#!/usr/bin/python
"""Ansible module: plan the image graph (render, hash, ask the registry, write a bake file)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: layer_graph
short_description: Plan the aiclipse-comfy image graph and write a buildx bake file
description:
  - Validates the configuration and the GPU x CUDA x torch matrix, renders every node's build
    context (C(base-common), C(base-<target>) with its package layers, C(<template>-<target>)),
    hashes each node from its context, build args and parent, asks the registry which hash
    tags exist, and writes C(plan.json) and a C(docker buildx bake) file for the stale nodes.
  - In check mode the contexts are rendered into a temporary folder that is removed again;
    nothing in I(build_dir) changes. The package resolution cache may still be filled.
options:
  config:
    description: The configuration variables (registry, os_base, gpu_targets, package_layers,
      package_layers_exclude, package_layers_replace, comfyui, manager,
      cuda_torch_matrix_extra, cuda_torch_matrix_file). The matrix is the repo's
      playbooks/vars/cuda_torch_matrix.yml (or cuda_torch_matrix_file) with
      cuda_torch_matrix_extra merged over it.
    type: dict
    required: true
  templates:
    description: Template names to plan.
    type: list
    elements: str
    required: true
  templates_dir:
    description: Folder holding the templates.
    type: path
    required: true
  gpu:
    description: Plan only this GPU target.
    type: str
  repo_root:
    description: The project's root (Dockerfile templates, runtime scripts, matrix data).
    type: path
    required: true
  build_dir:
    description: Where contexts, plan.json and bake.json are written.
    type: path
    required: true
  cache_dir:
    description: Cache for resolutions and git sources.
    type: path
    required: true
  os_base_ref:
    description: The OS base image by digest (from the os_base role).
    type: str
    required: true
  python_version:
    description: Python version of the images (for the package resolution).
    type: str
    default: "3.11"
  platform:
    description: Wheel platform tag of the images.
    type: str
    default: manylinux_2_36_x86_64
  ca_bundle:
    description: CA bundle given to builds as the C(ca) secret.
    type: path
    default: /etc/ssl/certs/ca-certificates.crt
  jupyter_spec:
    description: pip spec of JupyterLab (empty to leave it out).
    type: str
    default: jupyterlab==4.4.10
  filebrowser_url:
    description: FileBrowser release archive URL (empty to leave it out).
    type: str
    default: ""
  filebrowser_sha256:
    description: sha256 of that archive.
    type: str
    default: ""
  source_timeout:
    description: Seconds a git remote or a package index may stay silent before the plan
      names it and skips what needs it (the inventory's C(source_timeout)). C(git ls-remote)
      must answer within it, a fetch may take ten times it; pip gets C(--timeout) and
      C(--retries) within it.
    type: float
    default: 60
  network:
    description: Network mode for builds (C(host) lets builds reach loopback git servers).
    type: str
    default: ""
  date_tag:
    description: Dated tag added to template images (nightly).
    type: str
    default: ""
  source:
    description: Value of the org.opencontainers.image.source label.
    type: str
    default: ""
  revision:
    description: Value of the org.opencontainers.image.revision label.
    type: str
    default: ""
  builder:
    description: Builder capabilities (C(ansible_facts.builder_host_buildx)).
    type: dict
    default: {}
  builders:
    description: The capabilities of every ready builder of a fleet; the bake file uses only
      what all of them can do (named contexts, registry cache) and loads images where a
      builder is not the engine's own. Given, I(builder) is ignored.
    type: list
    elements: dict
    default: []
  registry_username:
    description: Registry user for the existence checks.
    type: str
    default: ""
  registry_password:
    description: Registry password or token.
    type: str
    default: ""
    no_log: true
  insecure_registries:
    description: Registries spoken to over plain HTTP besides loopback.
    type: list
    elements: str
    default: []
author: aiclipse
"""

EXAMPLES = r"""
- name: Plan sd15-basic for every target
  layer_graph:
    config: "{{ aiclipse_config }}"
    templates: [sd15-basic]
    templates_dir: "{{ playbook_dir }}/templates"
    repo_root: "{{ playbook_dir }}"
    build_dir: "{{ playbook_dir }}/build"
    cache_dir: "{{ playbook_dir }}/.cache"
    os_base_ref: "{{ os_base_ref }}"
    builder: "{{ ansible_facts.builder_host_buildx }}"
  register: plan
"""

RETURN = r"""
nodes:
  description: Every node with its status (cached, stale), hash, tags, reason and layers;
    a C(base-<target>) node also has C(driver_floor) (the matrix row's min_driver, null for
    cpu) and C(torch_family) (each family member's resolved version).
  returned: always
  type: list
  elements: dict
stale:
  description: Names of the stale nodes, parents first.
  returned: always
  type: list
  elements: str
skipped_nodes:
  description: Nodes that cannot be planned here, with why. C(kind_of_skip) is C(failure)
    (an unreachable source or index; the run fails at its end, naming the node) or
    C(intent) (left out on purpose; a note).
  returned: always
  type: list
  elements: dict
  sample:
    - node: base-common
      reason: "comfyui.repo: cannot fetch https://github.com/comfyanonymous/ComfyUI (...)"
      kind_of_skip: failure
bake_file:
  description: Path of the bake file (empty in check mode).
  returned: always
  type: str
  sample: /srv/aiclipse/build/bake.json
plan_file:
  description: Path of plan.json (empty in check mode).
  returned: always
  type: str
notes:
  description: What people should know about the plan, not refusals (a target without
    torchaudio and the ComfyUI nodes that lose it, a cpu target given a CUDA build of torch
    and its size, ComfyUI's torch lines served by each target's family). Also in plan.json
    and at the end of I(table).
  returned: always
  type: list
  elements: str
  sample:
    - "cpu: no torchaudio (...): ComfyUI's audio nodes (...) will not load"
table:
  description: The plan as lines of a table, for people.
  returned: always
  type: list
  elements: str
caps:
  description: What the bake file was written for (copy_link, named_contexts,
    cache_export, load), which every builder can do.
  returned: always
  type: dict
"""

import dataclasses
import shutil
import tempfile
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.config import ConfigError, load_config
from ansible.module_utils.gitsource import GitSourceError
from ansible.module_utils.gpu_matrix import IncompatibleTarget, MatrixError
from ansible.module_utils.graph import (
    PlanError,
    Settings,
    load_previous,
    make_plan,
    plan_json,
    plan_table,
    weakest,
    write_outputs,
)
from ansible.module_utils.manifests import ManifestError
from ansible.module_utils.package_layers import LayerError, ResolveError, ResolveOptions
from ansible.module_utils.registry import Credentials, Registry, RegistryError, parse_ref
from ansible.module_utils.templates import TemplateError, load_template

EXPECTED = (
    ConfigError,
    GitSourceError,
    IncompatibleTarget,
    MatrixError,
    PlanError,
    ManifestError,
    LayerError,
    ResolveError,
    RegistryError,
    TemplateError,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "dict", "required": True},
            "templates": {"type": "list", "elements": "str", "required": True},
            "templates_dir": {"type": "path", "required": True},
            "gpu": {"type": "str"},
            "repo_root": {"type": "path", "required": True},
            "build_dir": {"type": "path", "required": True},
            "cache_dir": {"type": "path", "required": True},
            "os_base_ref": {"type": "str", "required": True},
            "python_version": {"type": "str", "default": "3.11"},
            "platform": {"type": "str", "default": "manylinux_2_36_x86_64"},
            "ca_bundle": {"type": "path", "default": "/etc/ssl/certs/ca-certificates.crt"},
            "jupyter_spec": {"type": "str", "default": "jupyterlab==4.4.10"},
            "filebrowser_url": {"type": "str", "default": ""},
            "filebrowser_sha256": {"type": "str", "default": ""},
            "network": {"type": "str", "default": ""},
            "source_timeout": {"type": "float", "default": 60.0},
            "date_tag": {"type": "str", "default": ""},
            "source": {"type": "str", "default": ""},
            "revision": {"type": "str", "default": ""},
            "builder": {"type": "dict", "default": {}},
            "builders": {"type": "list", "elements": "dict", "default": []},
            "registry_username": {"type": "str", "default": ""},
            "registry_password": {"type": "str", "default": "", "no_log": True},
            "insecure_registries": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["source_timeout"] <= 0:
        module.fail_json(
            msg=f"source_timeout: {p['source_timeout']:g} is not a positive number of seconds. "
            "Fix: set source_timeout in the inventory to the seconds a source may stay silent "
            "(60 by default)"
        )
    build_dir = Path(p["build_dir"])
    scratch = Path(tempfile.mkdtemp(prefix="aiclipse-plan-")) if module.check_mode else None
    registries: dict[str, Registry] = {}
    creds = Credentials(p["registry_username"], p["registry_password"])
    caps = weakest(p["builders"] or [p["builder"]])

    def lookup(ref: str) -> str | None:
        parsed = parse_ref(ref)
        if parsed.registry not in registries:
            registries[parsed.registry] = Registry(
                parsed.registry, creds, tuple(p["insecure_registries"])
            )
        return registries[parsed.registry].manifest_digest(parsed.repository, parsed.reference)

    try:
        config = load_config(p["config"])
        templates = [load_template(Path(p["templates_dir"]), name) for name in p["templates"]]
        settings = Settings(
            repo_root=Path(p["repo_root"]),
            build_dir=scratch or build_dir,
            os_base_ref=p["os_base_ref"],
            cache_dir=Path(p["cache_dir"]),
            python_version=p["python_version"],
            platform=p["platform"],
            ca_bundle=p["ca_bundle"],
            jupyter_spec=p["jupyter_spec"],
            filebrowser_url=p["filebrowser_url"],
            filebrowser_sha256=p["filebrowser_sha256"],
            source=p["source"],
            revision=p["revision"],
            network=p["network"],
            date_tag=p["date_tag"],
            caps=caps,
            resolve_options=ResolveOptions(
                cert=p["ca_bundle"], network_timeout_s=p["source_timeout"]
            ),
            source_timeout=p["source_timeout"],
        )
        previous = load_previous(build_dir / "plan.json")
        plan = make_plan(config, templates, settings, lookup, p["gpu"], previous)
        changed = False
        bake_path = plan_path = ""
        if not module.check_mode:
            bake_before = build_dir / "bake.json"
            old_bake = bake_before.read_bytes() if bake_before.exists() else b""
            plan_file, bake_file = write_outputs(plan, settings)
            # changed: another bake file, or other node hashes/statuses (reasons do not count)
            after = {node.name: (node.hash, node.status) for node in plan.nodes}
            before = {n: (i.get("hash"), i.get("status")) for n, i in (previous or {}).items()}
            changed = old_bake != bake_file.read_bytes() or before != after
            bake_path, plan_path = str(bake_file), str(plan_file)
    except EXPECTED as err:
        module.fail_json(msg=str(err))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    module.exit_json(
        changed=changed,
        nodes=plan_json(plan, settings)["nodes"],
        stale=[node.name for node in plan.stale],
        skipped_nodes=plan.skipped,  # not `skipped`: Ansible would call the task skipped
        notes=plan.notes,
        bake_file=bake_path,
        plan_file=plan_path,
        table=plan_table(plan).splitlines(),
        caps=dataclasses.asdict(caps),
    )


if __name__ == "__main__":
    main()
