"""Options of the image suite: --expect (the JSON the role writes), --gpu, --module-utils,
and --causes: where to write why each failed test failed (``causes_of``), canaries masked,
for the role to print and carry into the report."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

CAUSE_LINES = 40  # lines of one test's message kept
CAUSE_WIDTH = 400  # characters of one line kept
_CAUSES = pytest.StashKey[dict]()


def pytest_addoption(parser):
    parser.addoption("--expect", required=True, help="expectations JSON for this image")
    parser.addoption("--gpu", action="store_true", help="the target's GPU is present here")
    parser.addoption("--module-utils", default="", help="the project's module_utils folder")
    parser.addoption("--causes", default="", help="write why each failed test failed (JSON)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--gpu"):
        return
    skip = pytest.mark.skip(reason="the target's GPU is not on this builder")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs the target's GPU")
    config.stash[_CAUSES] = {}


def message_lines(excinfo) -> list[str]:
    """The lines of a failure's message that say why: an assertion's own message (pytest's
    ``assert ...`` explanation after it left out), else ``<Exception>: <message>``."""
    text = str(excinfo.value).strip()
    lines = text.splitlines() or [excinfo.typename]
    if excinfo.errisinstance(AssertionError):
        if len(lines) > 1 and lines[0].startswith("assert "):
            pass  # a bare assert: pytest's explanation is all there is
        else:
            cut = [n for n, line in enumerate(lines) if n and line.startswith("assert ")]
            lines = lines[: cut[0]] if cut else lines
            # pytest indents a message's next lines; the causes indent them once, themselves
            lines = lines[:1] + textwrap.dedent("\n".join(lines[1:])).splitlines()
    else:
        lines[0] = f"{excinfo.typename}: {lines[0]}"
    return lines


def masked(line: str, canaries: list[str]) -> str:
    """``line`` with every canary replaced by ``***``, cut to CAUSE_WIDTH characters."""
    for canary in canaries:
        line = line.replace(canary, "***") if canary else line
    return line if len(line) <= CAUSE_WIDTH else line[: CAUSE_WIDTH - 3] + "..."


def causes_of(tests: dict[str, list[str]], canaries: list[str]) -> list[str]:
    """``<test>: <first line>`` then its next lines indented, CAUSE_LINES per test, masked."""
    out = []
    for test, lines in tests.items():
        kept = lines[:CAUSE_LINES] + (
            [f"... {len(lines) - CAUSE_LINES} more line(s)"] if len(lines) > CAUSE_LINES else []
        )
        out += [
            f"{test}: {masked(line, canaries)}" if n == 0 else f"  {masked(line, canaries)}"
            for n, line in enumerate(kept)
        ]
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        name = item.originalname or item.name
        stage = "" if report.when == "call" else f" ({report.when})"
        item.config.stash[_CAUSES][name + stage] = message_lines(call.excinfo)


def pytest_sessionfinish(session):
    dest = session.config.getoption("--causes")
    if not dest:
        return
    tests = session.config.stash.get(_CAUSES, {})
    try:
        canaries = json.loads(Path(session.config.getoption("--expect")).read_text())["canaries"]
    except (OSError, ValueError, KeyError):
        canaries = []  # no expectations read: no test ran that could have met a canary
    canaries = [str(c) for c in canaries]
    data = {
        "causes": causes_of(tests, canaries),  # what the role prints and reports
        "tests": {k: [masked(line, canaries) for line in v] for k, v in tests.items()},
    }
    Path(dest).write_text(json.dumps(data, indent=2) + "\n")


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
    """module_utils/comfy_log.py (standard library only, loaded by its path): ComfyUI's log
    read for what failed to import, and why."""
    import importlib.util
    import sys

    folder = request.config.getoption("--module-utils")
    path = Path(folder) / "comfy_log.py"
    spec = importlib.util.spec_from_file_location("aiclipse_comfy_log", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
