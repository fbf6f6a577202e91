"""module_utils/report.py: rows from the roles' results, layer owners, table, chart, JSON."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from ansible.module_utils.report import (
    Layer,
    attribute_layers,
    document,
    failures,
    layers_of,
    notes,
    rows,
    summary,
    svg,
    table,
)
from hypothesis import given
from hypothesis import strategies as st

REG = "127.0.0.1:5000/aiclipse/comfyui"
D = {
    n: "sha256:" + c * 64 for n, c in zip(("os", "common", "gpu", "tpl", "x"), "abcde", strict=True)
}


def plan_nodes() -> list[dict]:
    def node(name, kind, parent, status, reason=""):
        return {
            "name": name,
            "kind": kind,
            "parent": parent,
            "target": "cpu" if kind not in ("os-base", "base-common") else None,
            "status": status,
            "reason": reason,
            "ref": f"{REG}:{name}-0123456789ab",
            "digest": "",
        }

    return [
        node("os-base", "os-base", None, "external"),
        node("base-common", "base-common", "os-base", "cached"),
        node("base-cpu", "base-gpu", "base-common", "stale", "new torch"),
        node("tiny-cpu", "template", "base-cpu", "stale", "new node"),
        node("big-cpu", "template", "base-cpu", "stale", "new node"),
        node("sd-h100", "template", "base-h100", "skipped", "comfyui.repo unreachable"),
    ]


def results() -> tuple[dict, dict, dict]:
    build = {
        "base-common": {"status": "cached", "reason": "", "seconds": 0, "digest": D["common"]},
        "base-cpu": {"status": "built", "reason": "", "seconds": 12.5, "digest": ""},
        "tiny-cpu": {"status": "built", "reason": "", "seconds": 3.0, "digest": ""},
        "big-cpu": {"status": "built", "reason": "", "seconds": 4.0, "digest": ""},
    }
    verify = {
        "tiny-cpu": {"status": "passed", "summary": "21 passed", "report": "/b/tiny-cpu.xml"},
        "big-cpu": {"status": "failed", "summary": "1 failed, 20 passed", "report": "/b/big.xml"},
    }
    push = {
        f"{REG}:base-cpu-0123456789ab": {
            "status": "pushed",
            "digest": D["gpu"],
            "bytes_pushed": 4000,
            "seconds": 1.5,
            "tags": [],
        },
        f"{REG}:tiny-cpu-0123456789ab": {
            "status": "pushed",
            "digest": D["tpl"],
            "bytes_pushed": 100,
            "seconds": 0.5,
            "tags": ["tiny-cpu", "tiny-cpu-20261123"],
        },
    }
    return build, verify, push


def by_name(report):
    return {row.node: row for row in report}


def test_rows_join_plan_build_verify_and_push():
    report = by_name(rows(plan_nodes(), *results()))
    assert report["os-base"].status == "external"
    assert report["base-common"].status == "cached"
    assert report["base-cpu"].status == "built" and report["base-cpu"].pushed
    assert report["base-cpu"].bytes_pushed == 4000 and report["base-cpu"].build_seconds == 12.5
    tiny = report["tiny-cpu"]
    assert (tiny.status, tiny.verified, tiny.digest) == ("built", "passed", D["tpl"])
    assert tiny.tags == ["tiny-cpu", "tiny-cpu-20261123"] and tiny.push_seconds == 0.5
    big = report["big-cpu"]
    assert big.status == "failed" and not big.pushed
    assert big.why == "verification failed: 1 failed, 20 passed (/b/big.xml)"
    assert report["sd-h100"].status == "skipped"
    assert report["sd-h100"].why == "comfyui.repo unreachable"


def test_a_failed_push_fails_the_row_and_says_why():
    build, verify, push = results()
    push[f"{REG}:tiny-cpu-0123456789ab"] = {
        "status": "failed",
        "error": "registry refused the credentials; set AICLIPSE_REGISTRY_USERNAME",
        "seconds": 0.1,
    }
    tiny = by_name(rows(plan_nodes(), build, verify, push))["tiny-cpu"]
    assert tiny.status == "failed" and not tiny.pushed
    assert tiny.why.startswith("push failed: registry refused")


def test_without_a_build_step_stale_nodes_are_planned():
    report = by_name(rows(plan_nodes(), {}, {}, {}))
    assert report["base-cpu"].status == "planned"
    assert report["tiny-cpu"].why == "new node"


def test_a_builder_that_never_reported_fails_its_images_naming_it():
    """A fleet: base-cpu and big-cpu on builder b, which died before it gave any result;
    tiny-cpu on a, which finished, and a built image of b that was never pushed."""
    build, verify, push = results()
    for name in ("base-cpu", "big-cpu"):
        del build[name]
    del verify["big-cpu"]
    del push[f"{REG}:base-cpu-0123456789ab"]
    builder_of = {"base-common": "a", "base-cpu": "b", "tiny-cpu": "a", "big-cpu": "b"}
    report = by_name(rows(plan_nodes(), build, verify, push, builder_of, ["a"]))
    assert report["big-cpu"].status == "failed"
    assert report["big-cpu"].why.startswith("builder b did not finish (unreachable")
    assert report["base-cpu"].status == "failed" and report["base-cpu"].builder == "b"
    assert report["tiny-cpu"].status == "built" and report["tiny-cpu"].builder == "a"
    assert report["sd-h100"].status == "skipped"  # the plan skipped it: no builder involved
    build["big-cpu"] = {"status": "built", "reason": "", "seconds": 4.0, "digest": ""}
    big = by_name(rows(plan_nodes(), build, verify, push, builder_of, ["a"]))["big-cpu"]
    assert big.status == "failed" and big.why.startswith("builder b did not finish")
    # and a finished builder's image built but not pushed (verification not run) is not failed
    assert (
        by_name(rows(plan_nodes(), build, verify, push, builder_of, ["a", "b"]))["big-cpu"].status
        == "built"
    )
    lines = table(list(report.values())).splitlines()
    assert lines[0].split()[:3] == ["STATUS", "IMAGE", "BUILDER"]  # more than one builder
    assert next(line for line in lines if " big-cpu " in line).split()[:3] == [
        "failed",
        "big-cpu",
        "b",
    ]


def test_layers_of_skips_empty_layer_history():
    manifest = {"layers": [{"digest": D["os"], "size": 10}, {"digest": D["common"], "size": 20}]}
    config = {
        "history": [
            {"created_by": "debootstrap"},
            {"created_by": "/bin/sh -c #(nop)  ENV A=1", "empty_layer": True},
            {"created_by": "RUN |0 /bin/sh -c apt-get install git"},
        ]
    }
    got = layers_of(manifest, config)
    assert [(layer.size, layer.step) for layer in got] == [
        (10, "debootstrap"),
        (20, "RUN |0 /bin/sh -c apt-get install git"),
    ]


def with_layers():
    report = rows(plan_nodes(), *results())
    named = by_name(report)
    chain = {
        "os-base": ["os"],
        "base-common": ["os", "common"],
        "base-cpu": ["os", "common", "gpu"],
        "tiny-cpu": ["os", "common", "gpu", "tpl"],
    }
    for node, layers in chain.items():
        named[node].layers = [Layer(D[k], 1000 * (i + 1)) for i, k in enumerate(layers)]
    attribute_layers(report, {n["name"]: n["parent"] for n in plan_nodes()})
    return report


def test_each_layer_belongs_to_the_node_that_added_it():
    tiny = by_name(with_layers())["tiny-cpu"]
    assert [layer.owner for layer in tiny.layers] == [
        "os-base",
        "base-common",
        "base-cpu",
        "tiny-cpu",
    ]
    assert tiny.size == 10000 and tiny.own_size() == 4000


def test_without_the_parents_layers_every_layer_is_the_images_own():
    report = rows(plan_nodes(), *results())
    tiny = by_name(report)["tiny-cpu"]
    tiny.layers = [Layer(D["os"], 5), Layer(D["tpl"], 7)]
    attribute_layers(report, {n["name"]: n["parent"] for n in plan_nodes()})
    assert [layer.owner for layer in tiny.layers] == ["tiny-cpu", "tiny-cpu"]


def test_summary_counts_shared_layers_once():
    totals = summary(with_layers())
    assert totals["built"] == ["base-cpu", "tiny-cpu"]
    assert totals["failed"] == ["big-cpu"] and totals["skipped"] == ["sd-h100"]
    assert totals["cached"] == ["base-common"]
    assert totals["bytes_pushed"] == 4100
    # images (OS base aside): 1000+2000 + 1000+2000+3000 + 1000+2000+3000+4000
    assert totals["images_bytes"] == 19000
    assert totals["unique_bytes"] == 10000
    assert totals["ok"] is False


def test_table_has_a_line_per_image_with_why():
    text = table(with_layers())
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["STATUS", "IMAGE", "DIGEST", "SIZE"]
    assert len(lines) == 1 + 5  # the OS base is an input, not a row
    tiny = next(line for line in lines if " tiny-cpu " in line)
    assert tiny.split()[:3] == ["built", "tiny-cpu", "dddddddddddd"]
    assert "10.0 KB" in tiny and "4.0 KB" in tiny and "100 B" in tiny
    assert any("verification failed: 1 failed" in line for line in lines)


def test_svg_is_well_formed_with_a_bar_per_image_and_a_segment_per_layer():
    chart = svg(with_layers(), "sizes <&> test")
    root = ET.fromstring(chart)
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "sizes <&> test" in texts
    for node in ("base-common", "base-cpu", "tiny-cpu"):
        assert node in texts
    segments = [r for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert len(segments) == 2 + 3 + 4
    tips = [r.find(f"{ns}title").text for r in segments]
    assert tips[-1].startswith("tiny-cpu: 4.0 KB")
    widths = [float(r.get("width")) for r in segments]
    assert max(widths) == 560 * 4000 / 10000
    assert any("stored once in the registry 10.0 KB" in (t or "") for t in texts)


def test_document_is_json_with_sizes():
    doc = document(with_layers(), {"templates": ["tiny"]})
    again = json.loads(json.dumps(doc))
    assert again["templates"] == ["tiny"]
    tiny = next(item for item in again["images"] if item["node"] == "tiny-cpu")
    assert tiny["size"] == 10000 and tiny["own_size"] == 4000
    assert tiny["layers"][0] == {"digest": D["os"], "size": 1000, "owner": "os-base", "step": ""}


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 10**9)), max_size=12))
def test_unique_bytes_never_exceed_the_sum_of_images(spec):
    report = rows(plan_nodes(), *results())
    named = by_name(report)
    for i, (digest, size) in enumerate(spec):
        node = ("base-common", "base-cpu", "tiny-cpu")[i % 3]
        named[node].layers.append(Layer(f"sha256:{digest:064x}", size))
    totals = summary(report)
    assert totals["unique_bytes"] <= totals["images_bytes"]


def test_a_skip_for_a_failure_fails_the_run_one_on_purpose_is_a_note():
    nodes = plan_nodes()
    nodes[-1]["kind_of_skip"] = "failure"  # comfyui.repo unreachable
    nodes.append(dict(nodes[-1], name="sd-rtx", reason="not built for rtx", kind_of_skip="intent"))
    build, verify, push = results()
    build["big-cpu"] = {
        "status": "failed",
        "reason": "[big-cpu 3/5] RUN python install_nodes.py failed (exit code 1): "
        "install_nodes: ComfyUI-Foo: pip install failed",
        "cause": [
            "ERROR: No matching distribution found for x==9",
            "install_nodes: ComfyUI-Foo: pip install failed",
        ],
    }
    report = rows(nodes, build, verify, push)
    said = failures(report)
    assert said == [
        "big-cpu: verification failed: 1 failed, 20 passed (/b/big.xml)",
        "  big-cpu| ERROR: No matching distribution found for x==9",
        "  big-cpu| install_nodes: ComfyUI-Foo: pip install failed",
        "sd-h100: skipped: comfyui.repo unreachable",
    ]
    assert notes(report) == ["sd-rtx: skipped on purpose: not built for rtx"]
    assert summary(report)["ok"] is False
    # the nightly: a skip on purpose fails too
    assert failures(report, intent_fails=True)[-1] == "sd-rtx: skipped: not built for rtx"
    assert notes(report, intent_fails=True) == []
    entry = {e["node"]: e for e in document(report, {})["images"]}
    assert entry["big-cpu"]["cause"][-1] == "install_nodes: ComfyUI-Foo: pip install failed"
    assert entry["sd-h100"]["kind_of_skip"] == "failure"


def test_a_child_the_build_skipped_for_its_failed_parent_fails_the_run():
    build, verify, _ = results()
    build["base-cpu"] = {"status": "failed", "reason": "exit code 1", "cause": []}
    build["tiny-cpu"] = {"status": "skipped", "reason": "parent base-cpu failed"}
    del verify["tiny-cpu"], verify["big-cpu"]
    report = by_name(rows(plan_nodes()[:4], build, verify, {}))
    assert report["tiny-cpu"].kind_of_skip == "failure"
    assert failures(list(report.values())) == [
        "base-cpu: exit code 1",
        "tiny-cpu: skipped: parent base-cpu failed",
    ]


def test_only_images_on_purpose_left_out_keep_the_run_ok():
    nodes = [*plan_nodes()[:2], dict(plan_nodes()[-1], kind_of_skip="intent")]
    assert summary(rows(nodes, {}, {}, {}))["ok"] is True


def test_a_failed_verification_carries_each_failed_tests_message_as_its_cause():
    """image_verify's ``causes``: conftest.py's ``<test>: <first line>`` then the next lines
    indented (one per failing pack); each reaches the final message as ``<image>| <line>``."""
    build, verify, push = results()
    verify["big-cpu"]["causes"] = [
        "test_comfyui_quick_test_loads_every_node: ComfyUI could not import 2:",
        "    /opt/ComfyUI/custom_nodes/bad: ModuleNotFoundError: No module named 'x'; at "
        "/opt/ComfyUI/custom_nodes/bad/__init__.py:1: import x",
        "    comfy_extras/nodes_audio.py: ModuleNotFoundError: No module named 'torchaudio'",
    ]
    report = rows(plan_nodes(), build, verify, push)
    said = failures(report)
    assert said[0].startswith("big-cpu: verification failed")
    assert said[1] == "  big-cpu| " + verify["big-cpu"]["causes"][0]
    assert "custom_nodes/bad: ModuleNotFoundError: No module named 'x'" in said[2], said
    assert "comfy_extras/nodes_audio.py" in said[3] and said[4].startswith("sd-h100:"), said
    row = next(r for r in report if r.node == "big-cpu")
    assert row.cause == verify["big-cpu"]["causes"]  # report.json's cause: the same lines
