"""The verification reads ComfyUI the way a user does: its log, its workflows, its manifest.

The log lines below are the ones the real ComfyUI prints (nodes.py and main.py, Oct 2025:
``logging.warning(traceback.format_exc())`` then ``Cannot import ... module for custom
nodes``, ``Skip ... due to the lack of NODE_CLASS_MAPPINGS``, the ``Import times for custom
nodes:`` block with ``(IMPORT FAILED)``, ``IMPORT FAILED: <file>`` under a warning for its own
comfy_extras and comfy_api_nodes, the prestartup block), and the stand-in of
tests/fixtures/comfyui is run for real: it must fail where ComfyUI fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ansible.module_utils import comfy_log
from ansible.module_utils.workflows import (
    WorkflowError,
    missing_models,
    model_files,
    node_classes,
    provided,
    workflow_needs,
)

REPO = Path(__file__).resolve().parents[2]
REAL_LOG = """\
Failed to execute startup-script: /opt/ComfyUI/custom_nodes/ComfyUI-Foo/prestartup_script.py / No module named 'yaml'

Prestartup times for custom nodes:
   0.0 seconds: /opt/ComfyUI/custom_nodes/rgthree-comfy
   0.0 seconds (PRESTARTUP FAILED): /opt/ComfyUI/custom_nodes/ComfyUI-Foo
   1.2 seconds: /opt/ComfyUI/custom_nodes/ComfyUI-Manager

Python version: 3.11.9 (main, Apr  2 2024, 08:25:04) [GCC 12.2.0]
ComfyUI version: 0.3.64
Traceback (most recent call last):
  File "/opt/ComfyUI/nodes.py", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
  File "<frozen importlib._bootstrap_external>", line 940, in exec_module
  File "<frozen importlib._bootstrap>", line 241, in _call_with_frames_removed
  File "/opt/ComfyUI/comfy_extras/nodes_audio.py", line 4, in <module>
    import torchaudio
ModuleNotFoundError: No module named 'torchaudio'

Cannot import /opt/ComfyUI/comfy_extras/nodes_audio.py module for custom nodes: No module named 'torchaudio'
Traceback (most recent call last):
  File "/opt/ComfyUI/nodes.py", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
  File "/opt/ComfyUI/comfy_api_nodes/nodes_wan.py", line 3, in <module>
    from comfy_api_nodes.util import validate_string
ImportError: cannot import name 'validate_string' from 'comfy_api_nodes.util'

Cannot import /opt/ComfyUI/comfy_api_nodes/nodes_wan.py module for custom nodes: cannot import name 'validate_string' from 'comfy_api_nodes.util'
Traceback (most recent call last):
  File "/opt/ComfyUI/custom_nodes/ComfyUI-KJNodes/nodes/image_nodes.py", line 9, in <module>
    from scipy import ndimage
ModuleNotFoundError: No module named 'scipy'

Traceback (most recent call last):
  File "/opt/ComfyUI/nodes.py", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
  File "/opt/ComfyUI/custom_nodes/ComfyUI-VideoHelperSuite/__init__.py", line 1, in <module>
    from .videohelpersuite.nodes import NODE_CLASS_MAPPINGS
  File "/opt/ComfyUI/custom_nodes/ComfyUI-VideoHelperSuite/videohelpersuite/load_video_nodes.py", line 6, in <module>
    import cv2
  File "/opt/venv/lib/python3.11/site-packages/cv2/__init__.py", line 181, in <module>
    bootstrap()
ImportError: libxcb.so.1: cannot open shared object file: No such file or directory

Cannot import /opt/ComfyUI/custom_nodes/ComfyUI-VideoHelperSuite module for custom nodes: libxcb.so.1: cannot open shared object file: No such file or directory
Skip /opt/ComfyUI/custom_nodes/empty-pack module for custom nodes due to the lack of NODE_CLASS_MAPPINGS or NODES_LIST (need one).

Import times for custom nodes:
   0.0 seconds: /opt/ComfyUI/custom_nodes/websocket_image_save.py
   0.0 seconds (IMPORT FAILED): /opt/ComfyUI/custom_nodes/empty-pack
   0.1 seconds: /opt/ComfyUI/custom_nodes/rgthree-comfy
   0.1 seconds (IMPORT FAILED): /opt/ComfyUI/custom_nodes/ComfyUI-VideoHelperSuite
   0.2 seconds: /opt/ComfyUI/custom_nodes/ComfyUI-KJNodes
   0.3 seconds (IMPORT FAILED): /opt/ComfyUI/custom_nodes/ComfyUI-Silent

WARNING: some comfy_api_nodes/ nodes did not import correctly. This may be because they are missing some dependencies.

IMPORT FAILED: nodes_wan.py

This issue might be caused by new missing dependencies added the last time you updated ComfyUI.
Please do a: pip install -r requirements.txt

WARNING: some comfy_extras/ nodes did not import correctly. This may be because they are missing some dependencies.

IMPORT FAILED: nodes_audio.py

This issue might be caused by new missing dependencies added the last time you updated ComfyUI.
Please do a: pip install -r requirements.txt

Starting server

To see the GUI go to: http://127.0.0.1:8188
"""  # noqa: E501
VHS = "/opt/ComfyUI/custom_nodes/ComfyUI-VideoHelperSuite"
KJ = "/opt/ComfyUI/custom_nodes/ComfyUI-KJNodes"


def test_every_failure_of_the_real_log_is_named_with_its_exception_line_and_where():
    """Each of them, not only the first; nodes_wan.py of comfy_api_nodes is not
    comfy_extras' nodes_wan.py; a pack that loaded but printed a node's ImportError is named."""
    failures, loaded = comfy_log.read(REAL_LOG)
    assert failures == {
        "comfy_extras/nodes_audio.py": [
            "ModuleNotFoundError: No module named 'torchaudio'",
            "at /opt/ComfyUI/comfy_extras/nodes_audio.py:4: import torchaudio",
        ],
        "comfy_api_nodes/nodes_wan.py": [
            "ImportError: cannot import name 'validate_string' from 'comfy_api_nodes.util'",
            "at /opt/ComfyUI/comfy_api_nodes/nodes_wan.py:3: "
            "from comfy_api_nodes.util import validate_string",
        ],
        VHS: [
            "ImportError: libxcb.so.1: cannot open shared object file: No such file or directory",
            f"at {VHS}/videohelpersuite/load_video_nodes.py:6: import cv2",
        ],
        KJ: [
            "a node of it failed to import: ModuleNotFoundError: No module named 'scipy'",
            f"at {KJ}/nodes/image_nodes.py:9: from scipy import ndimage",
        ],
        "/opt/ComfyUI/custom_nodes/empty-pack": [
            "no nodes: it lacks NODE_CLASS_MAPPINGS or NODES_LIST (need one)."
        ],
        "/opt/ComfyUI/custom_nodes/ComfyUI-Silent": ["IMPORT FAILED (no error printed)"],
        "/opt/ComfyUI/custom_nodes/ComfyUI-Foo/prestartup_script.py": [
            "No module named 'yaml'",
            "PRESTARTUP FAILED",
        ],
    }
    # loaded: only what ComfyUI's import block lists without (IMPORT FAILED); the prestartup
    # block's ComfyUI-Manager is not in it
    assert loaded == {
        "/opt/ComfyUI/custom_nodes/websocket_image_save.py",
        "/opt/ComfyUI/custom_nodes/rgthree-comfy",
        KJ,
    }
    lines = comfy_log.describe(failures)
    assert len(lines) == 7 and lines[0].startswith("/opt/ComfyUI/custom_nodes/ComfyUI-Foo/")


def test_a_clean_log_has_no_failure():
    clean = "Import times for custom nodes:\n   0.1 seconds: /opt/ComfyUI/custom_nodes/x\n"
    assert comfy_log.failures(clean) == {}
    assert comfy_log.loaded(clean) == {"/opt/ComfyUI/custom_nodes/x"}


def test_lines_glued_to_managers_unterminated_prints_still_count():
    """The real ComfyUI-Manager's threads print ``FETCH DATA from: <url>`` without a newline
    while ComfyUI logs its import times; the upstream tier once saw the block's header (and so
    every node) lost that way on a loaded builder."""
    fetch = "FETCH DATA from: https://raw.githubusercontent.com/x/custom-node-list.json"
    log = (
        f"{fetch}Import times for custom nodes:\n"
        "   0.1 seconds: /opt/ComfyUI/custom_nodes/a\n"
        f"{fetch}   0.2 seconds: /opt/ComfyUI/custom_nodes/b\n"
        f"{fetch}   0.0 seconds (IMPORT FAILED): /opt/ComfyUI/custom_nodes/c\n"
    )
    assert comfy_log.loaded(log) == {"/opt/ComfyUI/custom_nodes/a", "/opt/ComfyUI/custom_nodes/b"}
    assert list(comfy_log.failures(log)) == ["/opt/ComfyUI/custom_nodes/c"]


def test_a_chained_traceback_and_a_syntax_error_give_the_last_exception():
    log = """\
Traceback (most recent call last):
  File "/c/custom_nodes/p/__init__.py", line 2, in <module>
    import fast
ModuleNotFoundError: No module named 'fast'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/c/nodes.py", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
  File "/c/custom_nodes/p/__init__.py", line 4, in <module>
    import slow
  File "/c/custom_nodes/p/slow.py", line 3
    def (
        ^
SyntaxError: invalid syntax

Cannot import /c/custom_nodes/p module for custom nodes: invalid syntax (slow.py, line 3)
"""
    assert comfy_log.failures(log) == {
        "/c/custom_nodes/p": [
            "SyntaxError: invalid syntax",
            "at /c/custom_nodes/p/slow.py:3: def (",
        ]
    }  # the first traceback (handled) is not a node-level failure of its own


def test_the_stand_in_fails_where_comfyui_fails(tmp_path):
    root = tmp_path / "ComfyUI"
    shutil.copytree(REPO / "tests" / "fixtures" / "comfyui", root)
    good, bad = root / "custom_nodes" / "good", root / "custom_nodes" / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "__init__.py").write_text(
        "import execution, folder_paths, nodes, server\n"
        "from server import PromptServer\n"
        "from .impl import Good\n"  # a package: its own modules import relatively
        "@PromptServer.instance.routes.get('/good/hello')\n"
        "async def hello(request):\n    pass\n"
        "NODE_CLASS_MAPPINGS = {'GoodNode': Good}\n"
        "NODE_DISPLAY_NAME_MAPPINGS = {'GoodNode': 'A good node'}\n"
        "WEB_DIRECTORY = './web'\n"
    )
    (good / "impl.py").write_text(
        "class Good:\n    RETURN_TYPES = ('INT',)\n    CATEGORY = 'good'\n"
        "    @classmethod\n    def INPUT_TYPES(cls):\n"
        "        return {'required': {'n': ('INT', {'default': 1})}}\n"
    )
    (bad / "__init__.py").write_text("import a_module_nobody_has\n")
    (root / "custom_nodes" / "off.disabled").mkdir()
    (root / "custom_nodes" / "notes.txt").write_text("not a node\n")
    run = subprocess.run(
        [sys.executable, str(root / "main.py"), "--cpu", "--quick-test-for-ci"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr  # exit 0, as ComfyUI's: the log must be read
    failures, loaded = comfy_log.read(run.stdout + run.stderr)
    assert failures == {
        str(bad): [
            "ModuleNotFoundError: No module named 'a_module_nobody_has'",
            f"at {bad}/__init__.py:1: import a_module_nobody_has",
        ]
    }
    assert loaded == {str(good), str(root / "custom_nodes" / "websocket_image_save.py")}


def test_the_stand_ins_object_info_lists_the_good_nodes_classes_as_comfyui_does(tmp_path):
    import socket
    import time
    import urllib.request

    root = tmp_path / "ComfyUI"
    shutil.copytree(REPO / "tests" / "fixtures" / "comfyui", root)
    (root / "custom_nodes" / "good").mkdir()
    (root / "custom_nodes" / "good" / "__init__.py").write_text(
        "import server\n"
        "class Good:\n    RETURN_TYPES = ('INT',)\n    RETURN_NAMES = ('count',)\n"
        "    CATEGORY = 'good'\n    OUTPUT_NODE = True\n"
        "    @classmethod\n    def INPUT_TYPES(cls):\n"
        "        return {'required': {'n': ('INT', {'default': 1})}}\n"
        "NODE_CLASS_MAPPINGS = {'GoodNode': Good}\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(root / "main.py"), "--cpu", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info", timeout=2) as r:
                    info = json.load(r)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the stand-in never answered /object_info")
        url = f"http://127.0.0.1:{port}/object_info/GoodNode"
        with urllib.request.urlopen(url, timeout=2) as r:
            one = json.load(r)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0  # SIGTERM: a clean stop
    assert info["GoodNode"] == {
        "input": {"required": {"n": ["INT", {"default": 1}]}},
        "input_order": {"required": ["n"]},
        "output": ["INT"],
        "output_is_list": [False],
        "output_name": ["count"],
        "name": "GoodNode",
        "display_name": "GoodNode",
        "description": "",
        "python_module": "custom_nodes.good",
        "category": "good",
        "output_node": True,
    }
    assert one == {"GoodNode": info["GoodNode"]}
    assert {"CheckpointLoaderSimple", "KSampler", "SaveImage"} <= set(info)
    assert info["KSampler"]["python_module"] == "nodes"


def test_ui_and_api_workflows_give_their_classes_and_models(tmp_path):
    ui = json.loads((REPO / "templates/sd15-basic/workflows/sd15_text_to_image.json").read_text())
    assert node_classes(ui) == [
        "CLIPTextEncode", "CheckpointLoaderSimple", "EmptyLatentImage", "KSampler",
        "SaveImage", "VAEDecode", "VAELoader",
    ]  # fmt: skip
    models = {name for _, _, name in model_files(ui)}
    assert any(name.endswith(".safetensors") for name in models), models
    api = {
        "1": {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": "flux-Q4.gguf"}},
        "2": {"class_type": "Note", "inputs": {"text": "a.safetensors is only text\nhere"}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1}},
    }
    assert node_classes(api) == ["KSampler", "UnetLoaderGGUF"]
    assert model_files(api) == [("1", "UnetLoaderGGUF", "flux-Q4.gguf")]
    (tmp_path / "w.json").write_text(json.dumps(api))
    needs = workflow_needs(tmp_path)
    assert missing_models(needs, {"flux-Q4.gguf"}) == []
    (problem,) = missing_models(needs, set())
    assert "w.json: node 1 (UnetLoaderGGUF) names flux-Q4.gguf" in problem and "Fix:" in problem


def test_a_model_in_a_subfolder_is_named_as_comfyuis_loaders_list_it(tmp_path):
    """``checkpoints/SD1.5/a.safetensors`` is ``SD1.5/a.safetensors`` in a workflow; the bare
    ``a.safetensors`` is not there (ComfyUI would not find it)."""
    names = provided(["checkpoints/SD1.5/a.safetensors", "loras/b.safetensors"])
    assert names == {"SD1.5/a.safetensors", "b.safetensors"}
    ui = {
        "nodes": [
            {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["a.safetensors"]},
            {"id": 5, "type": "LoraLoader", "widgets_values": ["b.safetensors", 1.0, 1.0]},
            {"id": 6, "type": "MarkdownNote", "widgets_values": ["get c.safetensors here"]},
            {"id": 7, "type": "Reroute"},
        ],
        "links": [],
    }
    (tmp_path / "ui.json").write_text(json.dumps(ui))
    needs = workflow_needs(tmp_path)
    assert needs["ui.json"]["classes"] == ["CheckpointLoaderSimple", "LoraLoader"]
    (problem,) = missing_models(needs, names)
    assert problem.startswith("ui.json: node 4 (CheckpointLoaderSimple) names a.safetensors")


def test_a_subgraph_workflow_gives_its_inner_nodes_not_the_instance():
    ui = {
        "nodes": [{"id": 9, "type": "0b4c7a5e-1111-4222-8333-944445555666", "widgets_values": []}],
        "definitions": {"subgraphs": [{
            "id": "0b4c7a5e-1111-4222-8333-944445555666",
            "nodes": [{"id": 1, "type": "UNETLoader",
                       "widgets_values": ["u.safetensors", "default"]}],
        }]},
    }  # fmt: skip
    assert node_classes(ui) == ["UNETLoader"]
    assert model_files(ui) == [("1", "UNETLoader", "u.safetensors")]


def test_a_file_that_is_no_workflow_is_named(tmp_path):
    (tmp_path / "broken.json").write_text("[1, 2]")
    with pytest.raises(WorkflowError, match=r"broken.json: not a workflow .*Fix:"):
        workflow_needs(tmp_path)


def test_shipped_templates_name_only_models_their_manifests_provide():
    from ansible.module_utils.manifests import parse_models

    for template in sorted((REPO / "templates").iterdir()):
        needs = workflow_needs(template / "workflows")
        manifest = template / "models_manifest.txt"
        names = provided(m.dest for m in parse_models(manifest.read_text(), str(manifest)))
        assert needs and missing_models(needs, names) == [], template.name


def test_only_the_audio_nodes_the_plan_names_are_accepted_as_lost(tmp_path):
    """torch 2.14.1 has no torchaudio: the plan names ComfyUI's audio nodes, and the
    verification accepts exactly those; torch 2.11.0 has one, so nothing is accepted."""
    from ansible.module_utils.config import load_config
    from ansible.module_utils.expectations import expectations

    matrix_file = REPO / "playbooks" / "vars" / "cuda_torch_matrix.yml"
    base = {
        "comfyui": {"repo": "https://example.invalid/c.git", "ref": "a" * 40},
        "manager": {"repo": "https://example.invalid/m.git", "ref": "b" * 40},
    }
    node = {"name": "t-x", "target": "x", "ref": "r/comfyui:t-x-0"}
    for torch, cuda, accepted in (
        ("2.14.1", "13.0", ["comfy_extras/nodes_audio.py", "comfy_extras/nodes_audio_encoder.py"]),
        ("2.11.0", "13.0", []),
    ):
        target = {"gpu": "rtx5090", "cuda": cuda, "torch": torch, "torch_cuda_arch_list": "12.0"}
        config = load_config({**base, "gpu_targets": {"x": target}})
        got = expectations(config, node, tmp_path, matrix_file, "3.11", [])
        assert got["accepted_import_failures"] == accepted, torch
        assert got["capability"] == "12.0"
