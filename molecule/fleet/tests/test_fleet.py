"""The template matrix built across two builders (molecule/fleet's verify).

build.yml runs against molecule's inventory: aiclipse-fleet-b1 carries the label cpu-a,
aiclipse-fleet-b2 cpu-b (GPU labels; CPU targets here, as no GPU exists on CI machines, so
the GPU checks themselves are not run). The registry, the git daemon and the OS base are the
verify's own (tests/fleet.py). In order:

1. the split: each target's chain builds, is verified and pushed on the builder carrying its
   label; base-common is built once, pushed first, and the other builder pulls it;
2. a second run builds nothing and pushes 0 bytes;
3. a base-common that fails to build skips both builders' chains, naming why;
4. a builder killed midway (its container, engine and all): the other builder's images are
   built, verified and tagged, the dead one's are reported failed and keep their old tags;
5. the dead builder is then unreachable: its target goes to the builder that is left, and
   the run still fails, naming the lost builder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(PROJECT / "tests"))

from fleet import Fleet, docker  # noqa: E402

B1, B2 = "aiclipse-fleet-b1", "aiclipse-fleet-b2"
ENGINE = {B1: "tcp://127.0.0.1:23751", B2: "tcp://127.0.0.1:23752"}
OWNER = {"cpu-a": B1, "cpu-b": B2}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    with Fleet(root, os.environ["MOLECULE_INVENTORY_FILE"]) as made:
        yield made


@pytest.fixture(scope="module")
def first(fleet):
    run = fleet.build()
    return {"run": run, "report": fleet.report() if run.returncode == 0 else {}}


def images(report: dict) -> dict[str, dict]:
    return {item["node"]: item for item in report["images"] if item["kind"] != "os-base"}


def tag_digest(fleet: Fleet, name: str) -> str:
    url = f"http://{fleet.listen}/v2/aiclipse-fleet/comfyui/manifests/{name}"
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    req = urllib.request.Request(url, method="HEAD", headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as reply:
        return reply.headers["Docker-Content-Digest"]


def test_each_target_builds_on_the_builder_carrying_its_label(first):
    run = first["run"]
    assert run.returncode == 0, run.stdout[-8000:]
    found = images(first["report"])
    assert {n: i["status"] for n, i in found.items()} == dict.fromkeys(found, "built")
    for target, builder in OWNER.items():
        assert found[f"base-{target}"]["builder"] == builder
        assert found[f"tiny-{target}"]["builder"] == builder
        template = found[f"tiny-{target}"]
        assert template["verified"] == "passed"
        assert template["pushed"] and f"tiny-{target}" in template["tags"]
    # the split is in the output as a table of builders and their shares
    assert "(first)" in run.stdout and "BUILDER" in run.stdout


def test_each_image_lives_on_its_builders_engine_only(first):
    found = images(first["report"])
    for target, builder in OWNER.items():
        other = B2 if builder == B1 else B1
        ref = found[f"tiny-{target}"]["ref"]
        docker("image", "inspect", ref, host=ENGINE[builder])
        assert docker("image", "inspect", ref, host=ENGINE[other], check=False) == "[]\n"


def test_base_common_is_built_once_and_the_other_builder_reuses_its_layers(first, fleet):
    found = images(first["report"])
    common = found["base-common"]
    maker = common["builder"]
    other = B2 if maker == B1 else B1
    logs = Path(fleet.vars["aiclipse_build_dir"]) / "logs"
    made_by = {p.parent.name for p in logs.glob("*/*/*.log") if "base-common" in p.name}
    assert made_by == {maker}  # one build of base-common in the whole fleet
    # the other builder's base starts from base-common's very layers, pulled from the registry
    theirs = next(i for i in found.values() if i["builder"] == other and i["kind"] == "base-gpu")
    common_layers = [layer["digest"] for layer in common["layers"]]
    assert [layer["digest"] for layer in theirs["layers"]][: len(common_layers)] == common_layers
    their_logs = "".join(p.read_text() for p in logs.glob(f"*/{other}/*.log"))
    assert "apt-get install" not in their_logs  # no step of base-common ran there
    # and it pushed only its own layers: base-common's were in the registry already
    assert theirs["bytes_pushed"] == theirs["own_size"] > 0
    assert theirs["size"] >= theirs["own_size"] + common["own_size"]


def test_a_second_run_builds_nothing_and_pushes_nothing(first, fleet):
    run = fleet.build()
    assert run.returncode == 0, run.stdout[-6000:]
    report = fleet.report()
    why = {i["node"]: i["why"] for i in report["images"] if i["status"] != "cached"}
    assert report["summary"]["built"] == [], why
    assert report["summary"]["bytes_pushed"] == 0


def test_a_common_base_that_fails_skips_every_chain_naming_it(first, fleet):
    """base-common asks for a JupyterLab that no index has: its builder fails it in the
    common phase, and both builders skip their chains with that reason; no tag moves."""
    before = {t: tag_digest(fleet, f"tiny-{t}") for t in OWNER}
    run = fleet.build({"image_jupyter_spec": "aiclipse-no-such-package==0.0.1"})
    assert run.returncode != 0
    report = fleet.report()
    found = images(report)
    assert report["summary"]["failed"] == ["base-common"]
    maker = found["base-common"]["builder"]
    for target in OWNER:
        base = found[f"base-{target}"]
        template = found[f"tiny-{target}"]
        for image in (base, template):
            assert image["status"] == "skipped", image
            # the parent's cause: its failing step, then pip's own words
            assert image["why"].startswith(f"parent base-common failed on {maker}: "), image
            assert "RUN " in image["why"], image
            assert "No matching distribution found for aiclipse-no-such-package" in image["why"]
        assert tag_digest(fleet, f"tiny-{target}") == before[target]


def test_a_builder_dying_midway_fails_only_its_images(first, fleet):
    """A template change (a fragment that sleeps) makes both template images stale; b2's
    container is killed while its build sleeps."""
    before = {t: tag_digest(fleet, f"tiny-{t}") for t in OWNER}
    tiny = Path(fleet.vars["aiclipse_templates_dir"]) / "tiny"
    (tiny / "Dockerfile.fragment").write_text("RUN sleep 30\n")
    proc = fleet.start()
    logs = Path(fleet.vars["aiclipse_build_dir"]) / "logs"
    deadline = time.monotonic() + 600
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        sleeping = [
            log
            for log in logs.glob(f"*/{B2}/*tiny*.log")
            if "sleep 30" in log.read_text(errors="replace")
        ]
        if sleeping:
            subprocess.run(["docker", "kill", B2], check=True, capture_output=True)
            killed = True
            break
        time.sleep(0.2)
    proc.wait(timeout=900)
    output = (fleet.root / "run.log").read_text()
    assert killed, "b2 never reached its template's sleep:\n" + output[-6000:]
    assert proc.returncode != 0, output[-6000:]
    found = images(fleet.report())
    assert found["tiny-cpu-a"]["status"] == "built" and found["tiny-cpu-a"]["pushed"]
    assert found["tiny-cpu-b"]["status"] == "failed" and found["tiny-cpu-b"]["builder"] == B2
    assert found["tiny-cpu-b"]["why"], found["tiny-cpu-b"]
    assert tag_digest(fleet, "tiny-cpu-a") == found["tiny-cpu-a"]["digest"] != before["cpu-a"]
    assert tag_digest(fleet, "tiny-cpu-b") == before["cpu-b"]  # its release tag did not move
    failures = output[output.rfind("TASK [Fail when an image failed") :]
    assert "tiny-cpu-b" in failures and "tiny-cpu-a" not in failures


def test_an_unreachable_builder_leaves_its_work_to_the_others(fleet):
    """b2 is dead now: Ansible cannot reach it, so the plan gives cpu-b to b1, which builds
    it; the run fails all the same, naming the builder it lost."""
    run = fleet.build()
    out = run.stdout
    assert run.returncode != 0
    assert f"fatal: [{B2}]" in out  # unreachable (or failed) in prepare, and out of the run
    report = fleet.report()
    found = images(report)
    assert found["tiny-cpu-b"]["builder"] == B1
    mine = found["tiny-cpu-b"]
    assert mine["status"] == "built" and mine["pushed"], (mine["why"], mine["cause"])
    assert tag_digest(fleet, "tiny-cpu-b") == found["tiny-cpu-b"]["digest"]
    lost = [line for line in report["failures_outside_images"] if line.startswith(f"builder {B2}")]
    assert lost, report["failures_outside_images"]
    assert json.dumps(report["fleet_notes"]).count(B2) == 1
