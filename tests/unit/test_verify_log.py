"""The verification reads ComfyUI the way a user does: its log, its workflows, its manifest.

The log lines below are the ones the real ComfyUI prints (nodes.py, Oct 2025: ``Cannot
import ... module for custom nodes``, the ``Import times for custom nodes:`` block with
``(IMPORT FAILED)``, and ``IMPORT FAILED: <file>`` under a warning for its own comfy_extras),
and the stand-in of tests/fixtures/comfyui is run for real: it must fail where ComfyUI fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from ansible.module_utils.workflows import (
    comfy_log_failures,
    comfy_log_loaded,
    missing_models,
    model_files,
    node_classes,
    workflow_needs,
)

REPO = Path(__file__).resolve().parents[2]
REAL_LOG = """\
Traceback (most recent call last):
  File "/opt/ComfyUI/nodes.py", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
  File "/opt/ComfyUI/comfy_extras/nodes_audio.py", line 4, in <module>
    import torchaudio
ModuleNotFoundError: No module named 'torchaudio'

Cannot import /opt/ComfyUI/comfy_extras/nodes_audio.py module for custom nodes: No module named 'torchaudio'
Traceback (most recent call last):
  File "/opt/ComfyUI/custom_nodes/ComfyUI-VideoHelperSuite/videohelpersuite/load_video_nodes.py", line 6, in <module>
    import cv2
ImportError: libxcb.so.1: cannot open shared object file: No such file or directory

Cannot import /opt/ComfyUI/custom_nodes/ComfyUI-VideoHelperSuite module for custom nodes: libxcb.so.1: cannot open shared object file: No such file or directory

Import times for custom nodes:
   0.0 seconds: /opt/ComfyUI/custom_nodes/websocket_image_save.py
   0.1 seconds: /opt/ComfyUI/custom_nodes/rgthree-comfy
   0.1 seconds (IMPORT FAILED): /opt/ComfyUI/custom_nodes/ComfyUI-VideoHelperSuite
   0.1 seconds (IMPORT FAILED): /opt/ComfyUI/custom_nodes/ComfyUI-KJNodes

WARNING: some comfy_extras/ nodes did not import correctly. This may be because they are missing some dependencies.

IMPORT FAILED: nodes_audio.py
"""  # noqa: E501


def test_every_failure_of_the_real_log_is_named_with_its_error():
    assert comfy_log_failures(REAL_LOG) == {
        "nodes_audio.py": "No module named 'torchaudio'",
        "/opt/ComfyUI/custom_nodes/ComfyUI-VideoHelperSuite": (
            "libxcb.so.1: cannot open shared object file: No such file or directory"
        ),
        "/opt/ComfyUI/custom_nodes/ComfyUI-KJNodes": "IMPORT FAILED",
    }
    assert "/opt/ComfyUI/custom_nodes/rgthree-comfy" in comfy_log_loaded(REAL_LOG)


def test_a_clean_log_has_no_failure():
    clean = "Import times for custom nodes:\n   0.1 seconds: /opt/ComfyUI/custom_nodes/x\n"
    assert comfy_log_failures(clean) == {}
    assert comfy_log_loaded(clean) == {"/opt/ComfyUI/custom_nodes/x"}


def test_the_stand_in_fails_where_comfyui_fails(tmp_path):
    root = tmp_path / "ComfyUI"
    shutil.copytree(REPO / "tests" / "fixtures" / "comfyui", root)
    good, bad = root / "custom_nodes" / "good", root / "custom_nodes" / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "__init__.py").write_text(
        "import execution, folder_paths, nodes, server\n"
        "class Good:\n    RETURN_TYPES = ('INT',)\n"
        "NODE_CLASS_MAPPINGS = {'GoodNode': Good}\n"
    )
    (bad / "__init__.py").write_text("import a_module_nobody_has\n")
    (root / "custom_nodes" / "off.disabled").mkdir()
    run = subprocess.run(
        [sys.executable, str(root / "main.py"), "--cpu", "--quick-test-for-ci"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr  # exit 0, as ComfyUI's: the log must be read
    log = run.stdout + run.stderr
    assert comfy_log_failures(log) == {str(bad): "No module named 'a_module_nobody_has'"}
    assert str(good) in comfy_log_loaded(log)
    assert not any("off.disabled" in path for path in comfy_log_loaded(log))


def test_ui_and_api_workflows_give_their_classes_and_models(tmp_path):
    ui = json.loads((REPO / "templates/sd15-basic/workflows/sd15_text_to_image.json").read_text())
    assert node_classes(ui) == [
        "CLIPTextEncode", "CheckpointLoaderSimple", "EmptyLatentImage", "KSampler",
        "SaveImage", "VAEDecode", "VAELoader",
    ]  # fmt: skip
    models = {name for _, name in model_files(ui)}
    assert any(name.endswith(".safetensors") for name in models), models
    api = {
        "1": {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": "flux-Q4.gguf"}},
        "2": {"class_type": "Note", "inputs": {"text": "a.safetensors is only text\nhere"}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1}},
    }
    assert node_classes(api) == ["KSampler", "UnetLoaderGGUF"]
    assert model_files(api) == [("UnetLoaderGGUF", "flux-Q4.gguf")]
    (tmp_path / "w.json").write_text(json.dumps(api))
    needs = workflow_needs(tmp_path)
    assert missing_models(needs, {"flux-Q4.gguf"}) == []
    (problem,) = missing_models(needs, set())
    assert "w.json: UnetLoaderGGUF names flux-Q4.gguf" in problem and "Fix:" in problem


def test_shipped_templates_name_only_models_their_manifests_provide():
    from ansible.module_utils.manifests import parse_models

    for template in sorted((REPO / "templates").iterdir()):
        needs = workflow_needs(template / "workflows")
        manifest = template / "models_manifest.txt"
        names = {m.name for m in parse_models(manifest.read_text(), str(manifest))}
        assert missing_models(needs, names) == [], template.name


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
        ("2.14.1", "13.0", ["nodes_audio.py", "nodes_audio_encoder.py"]),
        ("2.11.0", "13.0", []),
    ):
        target = {"gpu": "rtx5090", "cuda": cuda, "torch": torch, "torch_cuda_arch_list": "12.0"}
        config = load_config({**base, "gpu_targets": {"x": target}})
        got = expectations(config, node, tmp_path, matrix_file, "3.11", [])
        assert got["accepted_import_failures"] == accepted, torch
        assert got["capability"] == "12.0"
