"""module_utils/templates.py: the shipped templates load; every problem names file:line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from ansible.module_utils import manifests as m
from ansible.module_utils import templates as t

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "templates"
INVENTORY = ["rtx4090", "rtx5090", "h100", "cpu"]
URL = "https://huggingface.co/o/r/resolve/main/model.safetensors"
COMMIT = "1" * 40

UI_WORKFLOW = {
    "nodes": [
        {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["model.safetensors"]},
        {"id": 9, "type": "SaveImage"},
    ],
    "links": [[1, 4, 0, 9, 0, "IMAGE"]],
}
API_WORKFLOW = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
}
# Loader node types -> the model folder each widget value names a file in.
LOADERS = {
    "CheckpointLoaderSimple": ("checkpoints",),
    "VAELoader": ("vae",),
    "UNETLoader": ("diffusion_models", None),
    "DualCLIPLoader": ("text_encoders", "text_encoders", None, None),
}


def make(
    root: Path,
    name: str = "demo",
    yml: str = "description: A demo image\n",
    models: str = "# no models\n",
    nodes: str = "# no nodes\n",
    workflows: dict[str, str] | None = None,
    fragment: str | None = None,
) -> Path:
    """A template folder under ``root`` (tmp_path); returns its path."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / t.TEMPLATE_FILE).write_text(yml, encoding="utf-8")
    if models is not None:
        (folder / t.MODELS_FILE).write_text(models, encoding="utf-8")
    if nodes is not None:
        (folder / t.NODES_FILE).write_text(nodes, encoding="utf-8")
    for file_name, text in (workflows or {}).items():
        (folder / t.WORKFLOWS_DIR).mkdir(exist_ok=True)
        (folder / t.WORKFLOWS_DIR / file_name).write_text(text, encoding="utf-8")
    if fragment is not None:
        (folder / t.FRAGMENT_FILE).write_text(fragment, encoding="utf-8")
    return folder


def error(func, *args) -> t.TemplateError:
    with pytest.raises(t.TemplateError) as caught:
        func(*args)
    return caught.value


def yml_error(tmp_path: Path, yml: str) -> t.TemplateError:
    make(tmp_path, yml=yml)
    return error(t.load_template, tmp_path, "demo")


# --------------------------------------------------------------------------------------------
# The shipped templates


def test_shipped_templates_are_listed():
    assert t.list_templates(SHIPPED) == ["flux1-schnell", "sd15-basic", "sdxl"]


@pytest.mark.parametrize("name", ["flux1-schnell", "sd15-basic", "sdxl"])
def test_shipped_template_loads_with_pinned_and_verified_inputs(name):
    template = t.load_template(SHIPPED, name)
    assert template.name == name
    assert template.description
    assert template.workflows, "each template ships at least one workflow"
    assert template.models
    for model in template.models:
        # Every shipped model carries the publisher's sha256 and size: checked at download.
        assert model.sha256 and model.size, model.render()
        assert model.url.startswith("https://"), model.render()
    for node in template.nodes:
        assert node.pinned, f"{node.where}: pin a full 40-hex commit"
        assert node.url.startswith("https://github.com/")
    # Full commits need no lock entry: the build reads them without a lock file...
    assert [item.commit for item in template.locked_nodes()] == [n.ref for n in template.nodes]

    # ...and locking them asks no remote (it would fail here: no network).
    def no_network(url: str, ref: str) -> dict[str, str]:
        raise AssertionError(f"ls-remote called for {url}@{ref}")

    result = m.lock_nodes(template.nodes_manifest, ls_remote=no_network, write=False)
    assert [item.commit for item in result.nodes] == [n.ref for n in template.nodes]


def test_shipped_gpu_targets():
    assert t.load_template(SHIPPED, "sd15-basic").gpu_targets == t.ALL_TARGETS
    for name in ("flux1-schnell", "sdxl"):
        template = t.load_template(SHIPPED, name)
        assert "cpu" not in template.gpu_targets
        assert t.select_targets(template, INVENTORY) == ["rtx4090", "rtx5090", "h100"]
    assert t.select_targets(t.load_template(SHIPPED, "sd15-basic"), INVENTORY) == INVENTORY


@pytest.mark.parametrize("name", ["flux1-schnell", "sd15-basic", "sdxl"])
def test_shipped_workflows_use_the_template_models(name):
    """Every file a loader node names is in the template's models manifest, same folder."""
    template = t.load_template(SHIPPED, name)
    shipped = {(model.folder, model.name) for model in template.models}
    used = set()
    for relative in template.workflows:
        data = json.loads((Path(template.path) / relative).read_text(encoding="utf-8"))
        for node in data["nodes"]:
            folders = LOADERS.get(node["type"], ())
            for folder, value in zip(folders, node.get("widgets_values", []), strict=False):
                if folder is not None:
                    used.add((folder, value))
    assert used, "the workflow loads its models by name"
    assert used <= shipped, used - shipped


def test_flux_workflow_uses_the_schnell_settings():
    template = t.load_template(SHIPPED, "flux1-schnell")
    data = json.loads((Path(template.path) / template.workflows[0]).read_text())
    types = {node["type"] for node in data["nodes"]}
    assert {"UNETLoader", "DualCLIPLoader", "VAELoader", "ConditioningZeroOut", "KSampler"} <= types
    [sampler] = [node for node in data["nodes"] if node["type"] == "KSampler"]
    _seed, _control, steps, cfg, sampler_name, scheduler, _denoise = sampler["widgets_values"]
    assert (steps, cfg, sampler_name, scheduler) == (4, 1, "euler", "simple")
    [clip] = [node for node in data["nodes"] if node["type"] == "DualCLIPLoader"]
    assert clip["widgets_values"][:3] == [
        "clip_l.safetensors",
        "t5xxl_fp8_e4m3fn.safetensors",
        "flux",
    ]


# --------------------------------------------------------------------------------------------
# Listing and naming


def test_list_templates_skips_drafts_hidden_and_incomplete(tmp_path):
    make(tmp_path, "b")
    make(tmp_path, "a")
    make(tmp_path, "_draft")
    make(tmp_path, ".hidden")
    (tmp_path / "no-yml").mkdir()
    (tmp_path / "file.yml").write_text("description: x\n")
    assert t.list_templates(tmp_path) == ["a", "b"]


def test_list_templates_missing_root(tmp_path):
    err = error(t.list_templates, tmp_path / "nowhere")
    assert "templates folder" in str(err) and "not found" in str(err)


def test_unknown_template_lists_the_ones_that_exist_and_suggests(tmp_path):
    root = tmp_path / "templates"
    for name in ("sd15-basic", "sdxl", "flux1-schnell"):
        make(root, name)
    err = error(t.load_template, root, "sd15")
    assert str(err) == (
        f"unknown template 'sd15'; templates in {root}/: flux1-schnell, sd15-basic, sdxl "
        "(did you mean 'sd15-basic'?)"
    )
    assert "did you mean 'flux1-schnell'" in str(error(t.load_template, root, "flux-schnell"))
    assert "did you mean" not in str(error(t.load_template, root, "wan22"))


@pytest.mark.parametrize("name", ["../sdxl", "Sdxl", "", ".hidden", "a/b"])
def test_bad_template_names_are_unknown(tmp_path, name):
    make(tmp_path, "sdxl")
    assert "unknown template" in str(error(t.load_template, tmp_path, name))


def test_folder_without_template_yml(tmp_path):
    (tmp_path / "half").mkdir()
    err = error(t.load_template, tmp_path, "half")
    assert f"has no {t.TEMPLATE_FILE}" in str(err) and "create" in err.fix


# --------------------------------------------------------------------------------------------
# template.yml


def test_minimal_template_defaults(tmp_path):
    make(tmp_path)
    template = t.load_template(tmp_path, "demo")
    assert template == t.Template(
        name="demo",
        path=str(tmp_path / "demo"),
        description="A demo image",
        gpu_targets="all",
        extra_packages=(),
        comfy_args="",
        labels=(),
        models=(),
        nodes=(),
        workflows=(),
        fragment=None,
    )
    hash(template)
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.name = "other"  # type: ignore[misc]


def test_full_template(tmp_path):
    yml = (
        "description: '  Full demo  '\n"
        "gpu_targets: [h100, rtx4090]\n"
        "extra_packages:\n"
        "  - insightface==0.7.3\n"
        "  - 'onnxruntime-gpu>=1.18; sys_platform == \"linux\"'\n"
        "comfy_args: \"--fast --preview-method 'auto'\"\n"
        "labels:\n"
        "  org.opencontainers.image.title: demo\n"
        "  com.example/owner: team\n"
    )
    make(
        tmp_path,
        yml=yml,
        models=f"checkpoints {URL} sha256={'ab' * 32} size=10\n",
        nodes=f"https://github.com/o/node-a@{COMMIT}\n",
        workflows={
            "b_api.json": json.dumps(API_WORKFLOW),
            "a_ui.json": json.dumps(UI_WORKFLOW),
            "notes.txt": "not a workflow, not read",
        },
        fragment="# extra system packages\nRUN apt-get install -y libgl1\n",
    )
    template = t.load_template(tmp_path, "demo")
    assert template.description == "Full demo"
    assert template.gpu_targets == ("h100", "rtx4090")
    assert template.extra_packages[0] == "insightface==0.7.3"
    assert template.comfy_args == "--fast --preview-method 'auto'"
    assert template.label_map == {
        "org.opencontainers.image.title": "demo",
        "com.example/owner": "team",
    }
    assert [model.dest for model in template.models] == ["checkpoints/model.safetensors"]
    assert [node.name for node in template.nodes] == ["node-a"]
    assert template.workflows == ("workflows/a_ui.json", "workflows/b_api.json")
    assert template.fragment is not None and template.fragment.startswith("# extra")
    assert template.models_manifest == str(tmp_path / "demo" / t.MODELS_FILE)


def test_unknown_key_names_file_line_and_allowed_keys(tmp_path):
    err = yml_error(tmp_path, "description: x\n\ngpu_target: all\n")
    where = tmp_path / "demo" / t.TEMPLATE_FILE
    assert str(err) == (
        f"{where}:3:1: unknown key 'gpu_target'; allowed keys: description, gpu_targets, "
        "extra_packages, comfy_args, labels (did you mean 'gpu_targets'?)"
    )
    assert (err.file, err.line) == (str(where), 3)


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ("description: 5\n", 1, "description: must be a non-empty string, got int 5"),
        ("description: ''\n", 1, "description: must be a non-empty string"),
        ("description: x\ngpu_targets: rtx4090\n", 2, "must be 'all' or a list"),
        ("description: x\ngpu_targets: []\n", 2, "gpu_targets: is an empty list"),
        ("description: x\ngpu_targets:\n  - h100\n  - h100\n", 4, "'h100' is listed twice"),
        ("description: x\ngpu_targets:\n  - h100\n  - RTX 4090\n", 4, "is not a target name"),
        ("description: x\ngpu_targets: [h100, all]\n", 2, "'all' inside a list"),
        ("description: x\nextra_packages: numpy\n", 2, "must be a list of pip requirements"),
        ("description: x\nextra_packages:\n  - 'numpy=='\n", 3, "is not a valid requirement"),
        ("description: x\nextra_packages:\n  - 12\n", 3, "12 is not a requirement string"),
        (
            "description: x\nextra_packages:\n  - numpy\n  - NumPy>=2\n",
            4,
            "'NumPy' is requested twice",
        ),
        (
            "description: x\nextra_packages: ['pkg @ https://example.com/pkg.whl']\n",
            2,
            "installs from a URL",
        ),
        ("description: x\ncomfy_args: 5\n", 2, "comfy_args: must be a string, got int"),
        ("description: x\ncomfy_args: '--a \"b'\n", 2, "cannot be split into arguments"),
        ("description: x\nlabels: [a]\n", 2, "labels: must be a mapping"),
        ("description: x\nlabels:\n  org.x: 5\n", 3, "'org.x' must be a string, got int"),
        ("description: x\nlabels:\n  bad key: v\n", 3, "'bad key' is not a label key"),
        ("description: x\ndescription: y\n", 2, "'description' given twice (first on line 1)"),
        ("labels:\n  a: b\ndescription: x\nlabels:\n  c: d\n", 4, "given twice (first on line 1)"),
        ("gpu_targets: all\n", 1, "'description' is required and missing"),
        ("", 1, "empty file"),
        ("- description\n", 1, "must be a mapping of settings"),
        ("description: x\ngpu_targets: [a\n", 3, "invalid YAML"),
    ],
)
def test_bad_template_yml(tmp_path, body, line, needle):
    err = yml_error(tmp_path, body)
    assert err.file == str(tmp_path / "demo" / t.TEMPLATE_FILE)
    assert err.line == line, str(err)
    assert needle in str(err)
    assert err.fix


def test_every_template_yml_problem_is_reported_at_once(tmp_path):
    err = yml_error(tmp_path, "extra: 1\ngpu_targets: []\ncomfy_args: 3\n")
    assert [issue.line for issue in err.issues] == [1, 1, 2, 3]
    assert len(str(err).splitlines()) == 4


def test_template_yml_not_utf8(tmp_path):
    folder = make(tmp_path)
    (folder / t.TEMPLATE_FILE).write_bytes(b"description: caf\xe9\n")
    assert "not UTF-8" in str(error(t.load_template, tmp_path, "demo"))


# --------------------------------------------------------------------------------------------
# Manifests: the shared parser's errors pass through


def test_manifest_errors_come_from_the_shared_parser(tmp_path):
    make(tmp_path, models=f"# comment\ncheckpoint {URL}\n")
    with pytest.raises(m.ManifestError) as caught:
        t.load_template(tmp_path, "demo")
    issue = caught.value.issues[0]
    assert (issue.file, issue.line, issue.column) == (
        str(tmp_path / "demo" / t.MODELS_FILE),
        2,
        1,
    )
    assert "did you mean 'checkpoints'" in issue.fix


def test_node_manifest_errors_come_from_the_shared_parser(tmp_path):
    make(tmp_path, nodes="http://github.com/o/r\n")
    with pytest.raises(m.ManifestError) as caught:
        t.load_template(tmp_path, "demo")
    assert str(caught.value).startswith(f"{tmp_path / 'demo' / t.NODES_FILE}:1:1: plain http://")


@pytest.mark.parametrize("missing", ["models", "nodes"])
def test_missing_manifest_is_named(tmp_path, missing):
    make(tmp_path, **{missing: None})
    err = error(t.load_template, tmp_path, "demo")
    expected = t.MODELS_FILE if missing == "models" else t.NODES_FILE
    assert err.file == str(tmp_path / "demo" / expected)
    assert "is missing" in str(err)


# --------------------------------------------------------------------------------------------
# Workflows


def test_invalid_workflow_json_names_file_line_and_column(tmp_path):
    make(tmp_path, workflows={"broken.json": '{\n  "nodes": [],\n  "links": [,]\n}\n'})
    err = error(t.load_template, tmp_path, "demo")
    where = tmp_path / "demo" / "workflows" / "broken.json"
    assert str(err).startswith(f"{where}:3:13: invalid JSON (Expecting value)")
    assert (err.line, err.issues[0].column) == (3, 13)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ([1, 2], "the top level is a list"),
        ({}, "the object is empty"),
        ({"nodes": {}, "links": []}, "'nodes' must be a list"),
        ({"nodes": [], "links": None}, "'links' must be a list"),
        ({"nodes": [3], "links": []}, "nodes[0] is a number"),
        ({"nodes": [{"type": "X"}], "links": []}, "nodes[0] has no 'id'"),
        ({"nodes": [{"id": 1}], "links": []}, "nodes[0] (id 1) has no 'type'"),
        (
            {"nodes": [{"id": 1, "type": "A"}, {"id": 1, "type": "B"}], "links": []},
            "node id 1 is used twice",
        ),
        ({"nodes": [{"id": 1, "type": "A"}], "links": [[1, 1]]}, "links[0] is not"),
        (
            {"nodes": [{"id": 1, "type": "A"}], "links": [[1, 1, 0, 7, 0, "IMAGE"]]},
            "links[0] refers to node 7",
        ),
        ({"prompt": "a cat"}, "'prompt' is a string, not a node object"),
        ({"3": {"inputs": {}}}, "node '3' has no 'class_type'"),
        ({"3": {"class_type": "KSampler"}}, "node '3' has no 'inputs' object"),
        (
            {"3": {"class_type": "KSampler", "inputs": {"model": ["4", 0]}}},
            "input 'model' of node '3' refers to node '4'",
        ),
    ],
)
def test_json_that_is_not_a_workflow(tmp_path, data, needle):
    make(tmp_path, workflows={"odd.json": json.dumps(data)})
    err = error(t.load_template, tmp_path, "demo")
    assert err.file == str(tmp_path / "demo" / "workflows" / "odd.json")
    assert "not a ComfyUI workflow" in str(err) and needle in str(err)
    assert "UI format" in err.fix and "API format" in err.fix


def test_workflow_formats(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(API_WORKFLOW))
    assert t.check_workflow_file(path) == "api"
    ui = dict(UI_WORKFLOW, links=[{"id": 1, "origin_id": 4, "target_id": 9}])
    path.write_text(json.dumps(ui))
    assert t.check_workflow_file(path) == "ui"


# --------------------------------------------------------------------------------------------
# Dockerfile fragment


def test_fragment_may_not_start_a_stage_or_change_the_start_command(tmp_path):
    make(tmp_path, fragment="RUN true\n  from ubuntu:22.04\n")
    err = error(t.load_template, tmp_path, "demo")
    assert str(err).startswith(f"{tmp_path / 'demo' / t.FRAGMENT_FILE}:2:3: 'FROM' is not allowed")


def test_blank_fragment_is_none(tmp_path):
    make(tmp_path, fragment="\n  \n")
    assert t.load_template(tmp_path, "demo").fragment is None


# --------------------------------------------------------------------------------------------
# select_targets


def loaded(tmp_path: Path, targets: str) -> t.Template:
    make(tmp_path, yml=f"description: x\ngpu_targets: {targets}\n")
    return t.load_template(tmp_path, "demo")


def test_select_all_follows_the_inventory(tmp_path):
    template = loaded(tmp_path, "all")
    assert t.select_targets(template, INVENTORY) == INVENTORY
    assert t.select_targets(template, INVENTORY, "cpu") == ["cpu"]
    assert t.select_targets(template, INVENTORY, "h100, rtx4090") == ["rtx4090", "h100"]
    assert t.select_targets(template, INVENTORY, ["cpu", "h100"]) == ["h100", "cpu"]


def test_select_list_intersects_in_inventory_order(tmp_path):
    template = loaded(tmp_path, "[h100, rtx4090, a100]")
    assert t.select_targets(template, INVENTORY) == ["rtx4090", "h100"]
    assert t.select_targets(template, INVENTORY, "h100") == ["h100"]


def test_select_unsupported_target_lists_valid_ones(tmp_path):
    template = loaded(tmp_path, "[rtx4090, h100]")
    err = error(t.select_targets, template, INVENTORY, "cpu")
    assert str(err) == (
        "template 'demo' does not support gpu 'cpu'; its targets: rtx4090, h100 "
        f"(gpu_targets in {tmp_path / 'demo' / t.TEMPLATE_FILE})"
    )


def test_select_target_not_in_inventory(tmp_path):
    template = loaded(tmp_path, "all")
    err = error(t.select_targets, template, INVENTORY, "rtx4080")
    assert str(err) == (
        "gpu 'rtx4080' is not defined in the inventory; targets for 'demo': rtx4090, rtx5090, "
        "h100, cpu (did you mean 'rtx4090'?)"
    )
    # A target the template lists but the inventory lacks is refused as well.
    template = loaded(tmp_path / "other", "[a100, h100]")
    assert "not defined in the inventory" in str(
        error(t.select_targets, template, INVENTORY, "a100")
    )


def test_select_reports_every_bad_request(tmp_path):
    template = loaded(tmp_path, "[h100]")
    err = error(t.select_targets, template, INVENTORY, "cpu,v100")
    assert len(err.issues) == 2


def test_select_nothing_in_common(tmp_path):
    template = loaded(tmp_path, "[a100]")
    err = error(t.select_targets, template, ["cpu"])
    assert "supports a100; the inventory defines none of them (it has: cpu)" in str(err)


def test_select_empty_request(tmp_path):
    template = loaded(tmp_path, "all")
    assert "gpu= is empty" in str(error(t.select_targets, template, INVENTORY, " , "))
