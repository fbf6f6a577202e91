"""Options of the image suite: --expect (the JSON the role writes) and --gpu."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption("--expect", required=True, help="expectations JSON for this image")
    parser.addoption("--gpu", action="store_true", help="the target's GPU is present here")
    parser.addoption("--module-utils", default="", help="the project's module_utils folder")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--gpu"):
        return
    skip = pytest.mark.skip(reason="the target's GPU is not on this builder")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs the target's GPU")


@pytest.fixture(scope="session")
def expect(request):
    return json.loads(Path(request.config.getoption("--expect")).read_text())


@pytest.fixture(scope="session")
def serves(request):
    """gpu_matrix.serves, the one rule of the plan's validator (same major, minor <=, PTX)."""
    import ansible.module_utils

    folder = request.config.getoption("--module-utils")
    if folder and folder not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(folder)
    from ansible.module_utils.gpu_matrix import serves

    return serves


@pytest.fixture(scope="session")
def comfy_log(request):
    """module_utils/workflows.py: ComfyUI's log read for the nodes that failed to import."""
    import importlib.util

    folder = request.config.getoption("--module-utils")
    spec = importlib.util.spec_from_file_location("workflows", Path(folder) / "workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
