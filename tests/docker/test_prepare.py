"""playbooks/prepare.yml for real: engine, a registry on its own port, the OS base pushed.

Each test module gets its own registry (port, data folder, config) and removes it, the pushed
images and the local tags afterwards: the machine's disk outlives the run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, playbook, recap


@pytest.fixture(scope="module")
def test_registry(tmp_path_factory):
    port = free_port()
    listen = f"127.0.0.1:{port}"
    data = tmp_path_factory.mktemp("registry-data")
    safe = listen.replace(".", "_").replace(":", "_")
    cfg = Path(f"/etc/aiclipse/registry-{safe}.yml")
    log = Path(f"/var/log/aiclipse-registry-{safe}.log")
    yield {
        "listen": listen,
        "vars": {
            "local_registry_listen": listen,
            "local_registry_data_dir": str(data),
            "registry": f"{listen}/aiclipse-test",
        },
    }
    subprocess.run(["pkill", "-f", f"docker-registry serve {cfg}"], check=False)
    out = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"{listen}/*/*"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if out:
        subprocess.run(["docker", "rmi", "-f", *out], capture_output=True, check=False)
    for path in (cfg, log):
        path.unlink(missing_ok=True)
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def first_run(test_registry):
    return playbook("playbooks/prepare.yml", test_registry["vars"])


def test_prepare_pushes_the_os_base(test_registry, first_run):
    assert first_run.returncode == 0, first_run.stdout[-4000:]
    with urllib.request.urlopen(
        f"http://{test_registry['listen']}/v2/aiclipse-test/os-base/tags/list", timeout=5
    ) as resp:
        tags = json.load(resp)["tags"]
    assert len(tags) == 1 and tags[0].startswith("bookworm-"), tags
    ref = f"{test_registry['listen']}/aiclipse-test/os-base:{tags[0]}"
    release = subprocess.run(
        ["docker", "run", "--rm", ref, "cat", "/etc/os-release"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "VERSION_CODENAME=bookworm" in release
    assert f"OS base: {test_registry['listen']}/aiclipse-test/os-base@sha256:" in first_run.stdout


def test_prepare_again_changes_nothing(test_registry, first_run):
    assert first_run.returncode == 0
    again = playbook("playbooks/prepare.yml", test_registry["vars"])
    assert again.returncode == 0, again.stdout[-4000:]
    assert recap(again.stdout)["localhost"]["changed"] == 0, again.stdout[-4000:]
    assert "Run debootstrap" not in again.stdout.split("Build, import and push the rootfs")[-1]
