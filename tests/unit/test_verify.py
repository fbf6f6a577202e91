"""The image suite itself, run for real on this machine (testinfra's ``local://`` backend)
against the ComfyUI stand-in of tests/fixtures/comfyui with a good and a broken node: the
quick test, the node check and the short server run fail naming exactly the broken one and
the missing class, and the causes file (conftest.py's ``--causes``) carries each message with
the canaries masked. As root the suite starts ComfyUI as an unprivileged user (``nobody``
here, ``comfy`` in an image), the way start.sh does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1].parent
FILES = REPO / "roles" / "image_verify" / "files"
CANARY = "aiclipse-canary-in-a-message"


def _git(path: Path, *args: str) -> str:
    names = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL")
    env = {**os.environ, **dict.fromkeys(names, "t")}
    return subprocess.run(
        ["git", "-C", str(path), *args], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def _pack(root: Path, name: str, init: str) -> str:
    pack = root / "custom_nodes" / name
    pack.mkdir()
    (pack / "__init__.py").write_text(init)
    _git(pack, "init", "-q")
    _git(pack, "add", "-A")
    _git(pack, "commit", "-q", "-m", "x")
    return _git(pack, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def suite():
    """The suite's four ComfyUI tests against a stand-in with custom_nodes good and bad."""
    top = Path(tempfile.mkdtemp(prefix="aiclipse-verify-test-"))
    try:
        top.chmod(0o755)  # readable by the unprivileged user the suite runs ComfyUI as
        root = top / "ComfyUI"
        shutil.copytree(REPO / "tests" / "fixtures" / "comfyui", root)
        good = _pack(
            root, "good",
            "import execution, folder_paths, nodes, server\n"
            "from server import PromptServer\n"
            "@PromptServer.instance.routes.get('/good')\n"
            "async def hello(request):\n    pass\n"
            "class Good:\n    RETURN_TYPES = ('INT',)\n    CATEGORY = 'good'\n"
            "    @classmethod\n    def INPUT_TYPES(cls):\n"
            "        return {'required': {'n': ('INT', {'default': 1})}}\n"
            "NODE_CLASS_MAPPINGS = {'GoodNode': Good}\n",
        )  # fmt: skip
        bad = _pack(root, "bad", f"raise ImportError('needs {CANARY}')\n")
        for path in [top, *top.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        expect = {
            "comfyui_dir": str(root),
            "python_bin": str(Path(sys.base_prefix) / "bin" / "python3"),
            "user": "nobody",
            "nodes": [{"name": "good", "commit": good}, {"name": "bad", "commit": bad}],
            "workflows": {
                "w.json": {"classes": ["GoodNode", "KSampler", "NoSuchNode"], "models": []},
            },
            "missing_models": ["w.json: node 3 (UNETLoader) names x.safetensors, which ..."],
            "accepted_import_failures": [],
            "canaries": [CANARY],
        }
        (top / "expect.json").write_text(json.dumps(expect))
        run = subprocess.run(
            [sys.executable, "-m", "pytest", str(FILES / "test_image.py"), "--hosts=local://",
             "--expect", str(top / "expect.json"), "--module-utils", str(REPO / "module_utils"),
             "--causes", str(top / "causes.json"), "-p", "no:cacheprovider", "-q", "-rf",
             "-k", "quick_test or every_node or object_info or models_are"],
            cwd=FILES, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        yield run, json.loads((top / "causes.json").read_text()), root
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_the_suite_fails_naming_only_the_broken_node(suite):
    run, causes, root = suite
    assert run.returncode == 1 and "4 failed" in run.stdout, run.stdout[-3000:]
    tests = causes["tests"]
    quick = tests["test_comfyui_quick_test_loads_every_node"]
    assert quick[0] == "ComfyUI could not import 1:", quick
    assert quick[1] == (
        f"{root}/custom_nodes/bad: ImportError: needs ***; "
        f"at {root}/custom_nodes/bad/__init__.py:1: raise ImportError('needs ***')"
    ), quick  # the exception line of the traceback and where it was raised, masked
    assert len(quick) == 2, quick  # good loaded: not named
    node = tests["test_every_node_at_its_commit_and_loaded_by_comfyui"]
    assert len(node) == 2 and node[1].startswith("bad: IMPORT FAILED: ImportError"), node


def test_the_server_run_names_the_missing_class_and_lists_the_good_nodes(suite):
    _, causes, _ = suite
    info = causes["tests"]["test_workflow_nodes_are_in_object_info"]
    # GoodNode (the good pack's) and KSampler (a built-in) are in /object_info: not named
    assert info[0].startswith("1 node class(es)") and info[1] == "  w.json: NoSuchNode", info
    assert any("failed to import in that run" in line for line in info), info
    models = causes["tests"]["test_workflow_models_are_in_the_manifest"]
    assert models[1].startswith("w.json: node 3 (UNETLoader) names x.safetensors"), models


def test_the_causes_are_masked_and_prefixed_for_the_report(suite):
    _, causes, _ = suite
    assert CANARY not in json.dumps(causes)
    first = [line for line in causes["causes"] if not line.startswith("  ")]
    assert [line.split(":", 1)[0] for line in first] == [
        "test_comfyui_quick_test_loads_every_node",
        "test_every_node_at_its_commit_and_loaded_by_comfyui",
        "test_workflow_nodes_are_in_object_info",
        "test_workflow_models_are_in_the_manifest",
    ]
