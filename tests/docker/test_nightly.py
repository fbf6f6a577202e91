"""nightly.yml for real: every template of a templates folder, rebuilt only where an input moved.

Two templates made from the tiny fixture: ``alpha`` uses a custom node that follows the
``main`` branch of a git repository this test serves on loopback, ``beta`` has no node. The
first night builds everything; a quiet night (after a run that died and left its lock) builds
nothing and pushes 0 bytes; after a commit lands on the node's branch only ``alpha-cpu`` is
rebuilt, and the dated tags beyond ``nightly_retention_keep`` are deleted through the
registry API, except one a person still points ``prod`` at. A nightly started while another
holds the lock stops at once, naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from gitserver import GitServer, commit_all, make_comfy_sources, make_repo
from helpers import REPO, playbook
from wheels import make_torch_standin

TODAY = time.strftime("%Y%m%d", time.gmtime())


def registry_call(stack, method: str, path: str, data: bytes | None = None, headers=None):
    req = urllib.request.Request(
        f"http://{stack['listen']}{path}", data=data, method=method, headers=headers or {}
    )
    return urllib.request.urlopen(req, timeout=10)


def digest_of(stack, repo: str, tag: str) -> str | None:
    accept = {
        "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
        "application/vnd.oci.image.manifest.v1+json"
    }
    try:
        with registry_call(stack, "HEAD", f"/v2/{repo}/manifests/{tag}", headers=accept) as r:
            return r.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as err:
        assert err.code == 404
        return None


def put_old_image(stack, repo: str, tags: list[str], seed: str) -> str:
    """A small manifest of its own (a distinct config blob) under ``tags``: an old night."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    blob = "sha256:" + hashlib.sha256(config).hexdigest()
    with registry_call(stack, "POST", f"/v2/{repo}/blobs/uploads/") as resp:
        location = resp.headers["Location"]
    sep = "&" if "?" in location else "?"
    upload = urllib.request.Request(
        f"{location}{sep}digest={blob}",
        data=config,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    urllib.request.urlopen(upload, timeout=10).close()
    media = "application/vnd.oci.image.manifest.v1+json"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob,
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    for tag in tags:
        with registry_call(
            stack, "PUT", f"/v2/{repo}/manifests/{tag}", manifest, {"Content-Type": media}
        ) as resp:
            digest = resp.headers["Docker-Content-Digest"]
    return digest


@pytest.fixture(scope="module")
def night(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nightly")
    git_root = tmp / "git"
    commits = make_comfy_sources(git_root)
    node_src = tmp / "node-src"
    node_src.mkdir()
    (node_src / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\nVERSION = 1\n")
    node_repo, _ = make_repo(node_src, git_root / "AlphaNode")
    wheels = tmp / "wheels"
    make_torch_standin(wheels)
    templates = tmp / "templates"
    with GitServer(git_root) as server:
        for name, nodes in (("alpha", f"{server.url('AlphaNode')}@main\n"), ("beta", "")):
            shutil.copytree(REPO / "tests" / "fixtures" / "templates" / "tiny", templates / name)
            (templates / name / "workflows" / "tiny.json").rename(
                templates / name / "workflows" / f"{name}.json"
            )
            (templates / name / "nodes_manifest.txt").write_text(f"# nodes of {name}\n{nodes}")
        extra = {
            **stack["vars"],
            "gpu": "cpu",
            "aiclipse_templates_dir": str(templates),
            "aiclipse_build_dir": str(tmp / "build"),
            "aiclipse_cache_dir": str(tmp / "cache"),
            "aiclipse_reports_dir": str(tmp / "reports"),
            "nightly_lock_file": str(tmp / "nightly.lock"),
            # ComfyUI follows its main branch: the nightly re-locks it (it does not move here)
            "comfyui": {"repo": server.url("ComfyUI"), "ref": commits["ComfyUI"], "follow": "main"},
            "manager": {"repo": server.url("ComfyUI-Manager"), "ref": commits["ComfyUI-Manager"]},
            "gpu_targets": {
                "cpu": {"cuda": "cpu", "torch": "2.13.0", "torch_wheelhouse": str(wheels)}
            },
            "package_layers": [],
            "package_layers_exclude": [],
            "build_network": "host",
            "image_jupyter_spec": "",
        }
        state = {"tmp": tmp, "vars": extra, "node_repo": node_repo, "refs": set()}
        state["first"] = run_night(state)
        yield state
    for ref in state["refs"]:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True, check=False)


def run_night(state, **more) -> dict:
    run = playbook("nightly.yml", {**state["vars"], **more})
    plan_file = state["tmp"] / "build" / "plan.json"
    plan = {n["name"]: n for n in json.loads(plan_file.read_text())["nodes"]}
    state["refs"] |= {n["ref"] for n in plan.values() if n["kind"] != "os-base"}
    latest = state["tmp"] / "reports" / "latest" / "report.json"
    report = json.loads(latest.read_text()) if latest.exists() else {}
    return {"run": run, "plan": plan, "report": report}


def repo_of(ref: str) -> str:
    return ref.split("/", 1)[1].rsplit(":", 1)[0]


def test_the_first_night_builds_every_template_with_dated_tags(night, stack):
    first = night["first"]
    assert first["run"].returncode == 0, first["run"].stdout[-6000:]
    summary = first["report"]["summary"]
    assert summary["built"] == ["base-common", "base-cpu", "alpha-cpu", "beta-cpu"]
    assert first["report"]["stamp"].startswith("nightly-")
    for image in ("alpha-cpu", "beta-cpu"):
        ref = first["plan"][image]["ref"]
        hash_digest = digest_of(stack, repo_of(ref), ref.rsplit(":", 1)[1])
        assert digest_of(stack, repo_of(ref), f"{image}-{TODAY}") == hash_digest
        assert digest_of(stack, repo_of(ref), image) == hash_digest
    lock = (night["tmp"] / "templates" / "alpha" / "nodes_manifest.lock").read_text()
    assert "AlphaNode main " in lock
    assert not (night["tmp"] / "nightly.lock").exists()  # released


def test_a_nightly_stops_while_another_holds_the_lock(night):
    lock = night["tmp"] / "nightly.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "x"}))
    try:
        run = playbook("nightly.yml", night["vars"])
    finally:
        lock.unlink()
    assert run.returncode != 0
    assert f"another run holds {lock}: pid {os.getpid()}" in run.stdout
    assert "Build the stale images" not in run.stdout


def test_a_quiet_night_after_a_dead_run_builds_and_pushes_nothing(night):
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = night["tmp"] / "nightly.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    logs = night["tmp"] / "build" / "logs"
    before = set(logs.iterdir())
    quiet = run_night(night)
    assert quiet["run"].returncode == 0, quiet["run"].stdout[-6000:]
    summary = quiet["report"]["summary"]
    assert summary["built"] == [] and summary["bytes_pushed"] == 0
    assert summary["cached"] == ["base-common", "base-cpu", "alpha-cpu", "beta-cpu"]
    assert set(logs.iterdir()) == before  # no build ran at all
    assert not lock.exists()
    assert "no node moved" in quiet["run"].stdout


def test_a_moved_node_rebuilds_only_its_template_and_old_dated_tags_go(night, stack):
    repo = repo_of(night["first"]["plan"]["alpha-cpu"]["ref"])
    oldest = put_old_image(stack, repo, ["alpha-cpu-20250101"], "oldest")
    pinned = put_old_image(stack, repo, ["alpha-cpu-20250102", "prod"], "pinned")
    beta_old = put_old_image(stack, repo, ["beta-cpu-20250101"], "beta-old")
    (night["node_repo"] / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\nVERSION = 2\n")
    moved = commit_all(night["node_repo"], "a new commit on main")

    after = run_night(night, nightly_retention_keep=1)
    out = after["run"].stdout
    assert after["run"].returncode == 0, out[-6000:]
    summary = after["report"]["summary"]
    assert summary["built"] == ["alpha-cpu"]
    assert summary["cached"] == ["base-common", "base-cpu", "beta-cpu"]
    assert summary["bytes_pushed"] > 0
    lock = (night["tmp"] / "templates" / "alpha" / "nodes_manifest.lock").read_text()
    assert moved in lock
    alpha = after["plan"]["alpha-cpu"]["ref"]
    assert alpha != night["first"]["plan"]["alpha-cpu"]["ref"]
    new_digest = digest_of(stack, repo, alpha.rsplit(":", 1)[1])
    assert digest_of(stack, repo, f"alpha-cpu-{TODAY}") == new_digest
    assert digest_of(stack, repo, "alpha-cpu") == new_digest
    # keep 1: tonight's dated tag stays; the oldest goes; prod still holds 20250102
    assert digest_of(stack, repo, "alpha-cpu-20250101") is None
    assert digest_of(stack, repo, "alpha-cpu-20250102") == pinned == digest_of(stack, repo, "prod")
    assert digest_of(stack, repo, "beta-cpu-20250101") is None
    assert oldest in out and beta_old in out  # shown as deleted
    assert "prodstillpointsat" in re.sub(r"\s+", "", out)  # the YAML callback folds lines
    report = after["report"]
    assert report["kind"] == "nightly" and report["retention"]["keep"] == 1
    deleted = {d for images in report["retention"]["deleted"].values() for d in images}
    assert deleted == {oldest, beta_old}
    assert any(lock.endswith("alpha/nodes_manifest.lock") for lock in report["nodes_moved"])


def test_an_unreachable_node_repository_fails_the_night_in_its_report(night):
    """The re-lock cannot reach AlphaNode: the night goes on from the last lock (nothing moved,
    nothing built), the report names the failure, the run exits non-zero, the lock is freed."""
    repo = night["node_repo"]
    hidden = repo.with_name("AlphaNode.hidden")
    repo.rename(hidden)
    try:
        night_run = run_night(night)
    finally:
        hidden.rename(repo)
    run = night_run["run"]
    assert run.returncode != 0
    report = night_run["report"]
    assert report["summary"]["built"] == [] and report["summary"]["bytes_pushed"] == 0
    (failure,) = report["failures_outside_images"]
    assert failure.startswith("relock: ") and "AlphaNode" in failure
    assert "relock:" in run.stdout[run.stdout.rfind("TASK [Fail when an image") :]
    assert not (night["tmp"] / "nightly.lock").exists()
