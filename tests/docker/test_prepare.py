"""playbooks/prepare.yml for real: engine, a registry on its own port, the OS base pushed.

The session's ``stack`` fixture (conftest.py) ran prepare.yml once against a registry of the
tests' own; these tests check what it left and that a second run changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

from helpers import playbook, recap


def test_prepare_pushes_the_os_base(stack):
    first = stack["first_run"]
    assert first.returncode == 0, first.stdout[-4000:]
    with urllib.request.urlopen(
        f"http://{stack['listen']}/v2/aiclipse-test/os-base/tags/list", timeout=5
    ) as resp:
        tags = json.load(resp)["tags"]
    assert len(tags) == 1 and tags[0].startswith("bookworm-"), tags
    ref = f"{stack['listen']}/aiclipse-test/os-base:{tags[0]}"
    release = subprocess.run(
        ["docker", "run", "--rm", ref, "cat", "/etc/os-release"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "VERSION_CODENAME=bookworm" in release
    assert f"OS base: {stack['listen']}/aiclipse-test/os-base@sha256:" in first.stdout


def test_prepare_again_changes_nothing(stack):
    assert stack["first_run"].returncode == 0
    again = playbook("playbooks/prepare.yml", stack["vars"])
    assert again.returncode == 0, again.stdout[-4000:]
    assert recap(again.stdout)["localhost"]["changed"] == 0, again.stdout[-4000:]
    assert "Run debootstrap" not in again.stdout.split("Build, import and push the rootfs")[-1]
