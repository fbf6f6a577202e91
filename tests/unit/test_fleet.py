"""Placement of a plan's images on a fleet (module_utils/fleet.py) and each builder's cut of
the bake file (bake_run.share): pure, no engine."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.bake_run import Baker, share
from ansible.module_utils.fleet import Builder, FleetError, assign, costs, unready_notes
from test_bake import FakeBake, bake_of


def plan(targets: dict[str, list[str]], stale: bool = True, common: str = "stale") -> list[dict]:
    """os-base, base-common, then base-<gpu> and its templates for each target."""
    nodes = [
        {"name": "os-base", "kind": "os-base", "status": "external", "parent": None},
        {"name": "base-common", "kind": "base-common", "status": common, "parent": "os-base"},
    ]
    status = "stale" if stale else "cached"
    for gpu, templates in targets.items():
        base = f"base-{gpu}"
        common_ = {"target": gpu, "status": status}
        nodes.append({"name": base, "kind": "base-gpu", "parent": "base-common", **common_})
        nodes += [
            {"name": f"{t}-{gpu}", "kind": "template", "parent": base, **common_} for t in templates
        ]
    return nodes


def test_each_gpu_goes_to_the_builder_that_carries_it():
    nodes = plan({"rtx4090": ["sd15"], "h100": ["sd15", "flux"]})
    out = assign(nodes, [Builder("a", ("rtx4090",)), Builder("b", ("h100",))])
    assert out.builder_of["base-rtx4090"] == out.builder_of["sd15-rtx4090"] == "a"
    assert out.builder_of["base-h100"] == out.builder_of["flux-h100"] == "b"
    assert out.gpu_checks == {"rtx4090": True, "h100": True}
    # both builders have stale work: base-common is built first, on the lighter one (a)
    assert out.common == {"a": ["base-common"]}
    assert out.rest == {
        "a": ["base-rtx4090", "sd15-rtx4090"],
        "b": ["base-h100", "sd15-h100", "flux-h100"],
    }
    assert out.notes == []


def test_the_rest_is_spread_longest_first_onto_the_least_loaded():
    """Four cpu targets, unequal (templates per target 3, 2, 1, 0) on two builders: LPT puts
    the two largest apart and evens the loads."""
    nodes = plan({"c1": ["t1", "t2", "t3"], "c2": ["t1", "t2"], "c3": ["t1"], "c4": []})
    out = assign(nodes, [Builder("a"), Builder("b")], any_builder=("c1", "c2", "c3", "c4"))
    owner = {gpu: out.builder_of[f"base-{gpu}"] for gpu in ("c1", "c2", "c3", "c4")}
    assert owner["c1"] != owner["c2"]
    assert owner["c3"] == owner["c2"] and owner["c4"] == owner["c1"]
    # c1 7, c2 6, c3 5, c4 4: a gets c1 + c4 = 11, b c2 + c3 = 11; base-common (6) then a
    assert out.loads == {"a": 17.0, "b": 11.0}


def test_a_gpu_nobody_carries_still_builds_and_says_its_checks_do_not_run():
    out = assign(plan({"rtx5090": ["sd15"]}), [Builder("a", ("h100",)), Builder("b")])
    assert out.builder_of["sd15-rtx5090"] == "a"
    assert out.gpu_checks == {"rtx5090": False}
    assert out.notes == [
        "rtx5090: no ready builder carries this GPU (builder_gpus); "
        "it builds without its GPU checks"
    ]
    # all the stale work is on one builder: no common phase, base-common leads a's share
    assert out.common == {}
    assert out.rest["a"][0] == "base-common"


def test_a_labelled_cpu_target_stays_with_its_label_an_unlabelled_one_goes_anywhere():
    nodes = plan({"cpu-a": ["t"], "cpu-b": ["t"], "cpu-c": ["t"]})
    builders = [Builder("a", ("cpu-b",)), Builder("b", ("cpu-a",))]
    out = assign(nodes, builders, any_builder=("cpu-a", "cpu-b", "cpu-c"))
    assert out.builder_of["t-cpu-a"] == "b" and out.builder_of["t-cpu-b"] == "a"
    assert out.builder_of["t-cpu-c"] == "a"  # the tie goes to the first in inventory order
    assert out.gpu_checks == dict.fromkeys(("cpu-a", "cpu-b", "cpu-c"), False)
    assert out.notes == []


def test_times_of_an_earlier_report_weigh_the_units():
    nodes = plan({"c1": ["t"], "c2": ["t"], "c3": ["t"]})
    seconds = {"base-c1": 300.0, "t-c1": 20.0, "base-c2": 10.0, "base-c3": 10.0}
    out = assign(nodes, [Builder("a"), Builder("b")], seconds, ("c1", "c2", "c3"))
    assert out.builder_of["base-c1"] != out.builder_of["base-c2"]
    assert out.builder_of["base-c2"] == out.builder_of["base-c3"]
    assert out.loads[out.builder_of["base-c1"]] == 320.0


def test_untimed_nodes_are_weighed_in_the_timed_ones_seconds():
    """base-c1 took 400 s (100 s per weight unit) and t-c1 100 s: the untimed base-c2 (a new
    target) costs 4 x 100 s, not 4 'weights' beside hundreds of seconds."""
    nodes = plan({"c1": ["t"], "c2": ["t"]})
    cost = costs(nodes, {"base-c1": 400.0, "t-c1": 100.0})
    assert cost["base-c2"] == 400.0 and cost["t-c2"] == 100.0
    assert cost["base-common"] == 600.0 and cost["os-base"] == 0.0
    assert costs(nodes, {})["base-c2"] == 4.0  # nothing timed: the weights themselves


def test_cached_work_costs_nothing_and_keeps_base_common_with_its_builder():
    nodes = plan({"c1": ["t"], "c2": ["t"]}, stale=False, common="cached")
    out = assign(nodes, [Builder("a"), Builder("b")], any_builder=("c1", "c2"))
    assert set(out.loads.values()) == {0.0}
    assert out.common == {}
    assert "base-common" in out.rest[out.builder_of["base-common"]]


def test_no_ready_builder_is_a_clear_error():
    with pytest.raises(FleetError, match="no builder is ready"):
        assign(plan({"cpu": ["t"]}), [])
    assert unready_notes(["a", "b"], ["a"]) == [
        "builder b is not ready (unreachable, or it failed to prepare: see above); "
        "nothing was placed on it"
    ]


def test_table_lists_each_builder_with_its_load_and_share():
    builders = [Builder("a", ("rtx4090",)), Builder("b", ("h100",))]
    out = assign(plan({"rtx4090": ["sd15"], "h100": []}), builders)
    assert out.as_dict()["table"] == [
        "BUILDER  LOAD  NODES",
        "a         5.0  base-rtx4090, sd15-rtx4090",
        "b        10.0  base-common (first), base-h100",
    ]


def test_share_cuts_the_bake_file_and_drops_links_to_other_builders():
    bake = bake_of()
    bake["target"]["base-cpu"]["contexts"] = {"r/comfyui:base-common-h": "target:base-common"}
    bake["target"]["tiny-cpu"]["contexts"] = {"r/comfyui:base-cpu-h": "target:base-cpu"}
    cut = share(bake, ["base-cpu", "tiny-cpu"])
    assert sorted(cut["target"]) == ["base-cpu", "tiny-cpu"]
    assert "contexts" not in cut["target"]["base-cpu"]  # base-common comes from the registry
    assert cut["target"]["tiny-cpu"]["contexts"] == {"r/comfyui:base-cpu-h": "target:base-cpu"}
    assert cut["group"]["level1"]["targets"] == []
    assert cut["group"]["level2"]["targets"] == ["base-cpu"]
    assert "contexts" in bake["target"]["base-cpu"]  # the plan's own bake file is untouched
    json.dumps(cut)


def test_a_parent_another_builder_failed_skips_the_share_and_reports_only_it(tmp_path):
    fake = FakeBake()
    cut = share(bake_of(), ["base-gpu", "tiny-gpu"])
    names = ("base-common", "base-cpu", "base-gpu", "tiny-cpu", "tiny-gpu")
    nodes = [{"name": n, "status": "stale"} for n in names]
    report = Baker(
        "bake.json", cut, tmp_path, runner=fake, only=["base-gpu", "tiny-gpu"],
        blocked={"base-gpu": "parent base-common failed on a: ERROR: boom"},
    ).run(plan_nodes=nodes).as_dict()  # fmt: skip
    assert fake.calls == []
    assert report["skipped"] == ["base-gpu", "tiny-gpu"]
    assert report["outcomes"]["base-gpu"]["reason"] == "parent base-common failed on a: ERROR: boom"
    assert report["outcomes"]["tiny-gpu"]["reason"] == "parent base-gpu skipped"
    assert set(report["outcomes"]) == {"base-gpu", "tiny-gpu"}  # another builder reports the rest
