"""Shared pytest setup: make the repo's module_utils importable the way Ansible does.

Modules and module_utils import each other as ``ansible.module_utils.<name>``; Ansible's
module loader resolves that against ``ansible.cfg``'s ``module_utils`` folder. Here we extend
the package path so the same import lines work under plain pytest.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import ansible.module_utils
import pytest

REPO = Path(__file__).resolve().parent.parent
ansible.module_utils.__path__.append(str(REPO / "module_utils"))
for extra in (REPO / "tests", REPO / "runtime", REPO / "library", REPO / "filter_plugins"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

# Tools some tests drive for real. Locally a missing one skips those tests; in CI
# (AICLIPSE_REQUIRE_DOCKER=1, set by .ci/run after ./farm installed them) it stops the run.
TOOLS = ("git", "aria2c", "shellcheck", "docker-registry", "ssh")


def pytest_sessionstart(session):
    if os.environ.get("AICLIPSE_REQUIRE_DOCKER") != "1":
        return
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(
            f"CI needs {', '.join(missing)} on PATH (playbooks/test-host.yml installs them: "
            "./farm test runs it first)"
        )
