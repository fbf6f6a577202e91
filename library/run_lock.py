#!/usr/bin/python
"""Ansible module: a lock file so that two runs of a playbook never overlap."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_lock
short_description: Take or release a lock file held for the life of an ansible-playbook run
description:
  - C(state=present) creates I(path) atomically with the pid of the C(ansible-playbook)
    process that runs this task, its host and the time. When the file exists and names a
    process that still runs on this host, the task fails naming it; a lock left by a run
    that died is taken over (and the result says so).
  - C(state=absent) removes the lock when this run holds it.
options:
  path:
    description: The lock file.
    type: path
    required: true
  state:
    description: Take (present) or release (absent) the lock.
    type: str
    choices: [present, absent]
    default: present
author:
  - aiclipse-comfy
"""

EXAMPLES = r"""
- name: Take the nightly lock
  run_lock:
    path: /var/lib/aiclipse/nightly.lock
"""

RETURN = r"""
holder:
  description: What the lock file says (pid, host, started) after the task.
  returned: always
  type: dict
stale:
  description: The lock of a run that died, taken over.
  returned: when state is present
  type: dict
"""

import json
import os
import socket
import time
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule


def _parent_and_command(pid: int) -> tuple[int, bool] | None:
    """(parent pid, whether ``pid`` runs ansible-playbook), or None when it is gone."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    is_playbook = any(part.endswith(b"ansible-playbook") for part in cmdline[:2])
    return int(stat.rsplit(")", 1)[1].split()[1]), is_playbook


def playbook_pid() -> int:
    """The ansible-playbook process this module runs under. Its task workers are forks that
    carry the same command line, so it is the first ansible-playbook up the chain whose own
    parent is not one (an ansible-playbook that started this one through a script stays out)."""
    pid = os.getppid()
    while pid >= 1:
        here = _parent_and_command(pid)
        if here is None:
            break
        parent, is_playbook = here
        if is_playbook:
            above = _parent_and_command(parent) if parent >= 1 else None
            if above is None or not above[1]:
                return pid
        if pid == 1:
            break
        pid = parent
    return os.getppid()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        supports_check_mode=True,
    )
    path = Path(module.params["path"])
    me = {"pid": playbook_pid(), "host": socket.gethostname()}
    if module.params["state"] == "absent":
        holder = read(path)
        mine = holder.get("pid") == me["pid"] and holder.get("host") == me["host"]
        if mine and not module.check_mode:
            path.unlink(missing_ok=True)
        elif holder:
            module.warn(
                f"{path} is held by pid {holder.get('pid')} on {holder.get('host')}, "
                "not by this run: left in place"
            )
        module.exit_json(changed=mine, holder=holder)
    me["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stale = {}
    if module.check_mode:
        module.exit_json(changed=True, holder=me, stale=stale)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read(path)
            if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                module.exit_json(changed=False, holder=holder, stale=stale)
            same_host = holder.get("host") == me["host"]
            try:
                pid = int(holder.get("pid", 0))
            except (TypeError, ValueError):
                pid = 0  # a lock file we cannot read names no live process: stale
            if holder and (not same_host or (pid > 0 and alive(pid))):
                module.fail_json(
                    msg=f"another run holds {path}: pid {holder.get('pid')} on "
                    f"{holder.get('host')} since {holder.get('started')}. Wait for it to end; "
                    "if that process is gone, remove the file",
                    holder=holder,
                )
            stale = holder
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as out:
            json.dump(me, out)
        module.exit_json(changed=True, holder=me, stale=stale)
    module.fail_json(msg=f"could not take {path}: another run keeps creating it")


if __name__ == "__main__":
    main()
