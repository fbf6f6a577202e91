"""The docker tier: a real engine, real registries on loopback, real ansible-playbook runs.

A test here that cannot reach the engine is skipped on a developer's machine and FAILS in CI
(AICLIPSE_REQUIRE_DOCKER=1): a docker tier that silently skips proves nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session", autouse=True)
def docker_engine():
    probe = subprocess.run(["docker", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        msg = f"no Docker engine answers: {probe.stderr.strip()} (run ./farm test docker)"
        if os.environ.get("AICLIPSE_REQUIRE_DOCKER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def stack(tmp_path_factory, docker_engine):
    """A registry of the tests' own (port, data, config) with the OS base pushed by a real
    ``playbooks/prepare.yml`` run; removed with the images it holds at the end."""
    from helpers import free_port, playbook

    listen = f"127.0.0.1:{free_port()}"
    data = tmp_path_factory.mktemp("registry-data")
    safe = listen.replace(".", "_").replace(":", "_")
    cfg = Path(f"/etc/aiclipse/registry-{safe}.yml")
    log = Path(f"/var/log/aiclipse-registry-{safe}.log")
    extra = {
        "local_registry_listen": listen,
        "local_registry_data_dir": str(data),
        "registry": f"{listen}/aiclipse-test",
    }
    first = playbook("playbooks/prepare.yml", extra)
    made = re.search(r"OS base: (\S+?)'?$", first.stdout, re.M)
    if first.returncode != 0 or not made:
        pytest.fail(f"prepare.yml could not make the OS base:\n{first.stdout[-4000:]}")
    os_base = made.group(1)
    yield {"listen": listen, "vars": extra, "first_run": first, "os_base": os_base}
    subprocess.run(["pkill", "-f", f"docker-registry serve {cfg}"], check=False)
    images = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    ours = [ref for ref in images if ref.startswith(f"{listen}/")]
    if ours:
        subprocess.run(["docker", "rmi", "-f", *ours], capture_output=True, check=False)
    for path in (cfg, log):
        path.unlink(missing_ok=True)
    shutil.rmtree(data, ignore_errors=True)
