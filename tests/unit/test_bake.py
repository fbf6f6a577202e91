"""module_utils/bake_metadata.py and bake_run.py: metadata files, call order, per-target outcomes.

The runner is a fake here (no engine): it writes the log and the metadata file a real
``docker buildx bake`` would, and fails the targets a test names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible.module_utils.bake_metadata import MetadataError, parse_metadata, read_metadata
from ansible.module_utils.bake_run import Baker, batches, build_argv, entitlements, targets_of

# Recorded on the farm's build host (docker 20.10.24 / BuildKit 0.8, docker driver, buildx
# 0.13.1): `docker buildx bake --metadata-file` of one target, verbatim. The digest is the
# image id `docker image inspect` showed for the loaded image.
RECORDED_BUILDKIT_0_8 = """\
{
  "a": {
    "buildx.build.ref": "default/default/zc2se4m1p8e5tp3aq57e0kepz",
    "containerimage.digest": "sha256:f81d2a9b6e029e3c0f975c9c085036c7f0af5a84f5eeeebd0c207e99956d14b9"
  }
}"""  # noqa: E501 (verbatim)
# The shape newer buildx writes (docker-container driver, image pushed): config and manifest
# digests apart, plus a warnings list that is not a target.
NEWER = {
    "base-common": {
        "buildx.build.ref": "b/b0/xyz",
        "containerimage.config.digest": "sha256:" + "c" * 64,
        "containerimage.descriptor": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + "d" * 64,
            "size": 1234,
        },
        "containerimage.digest": "sha256:" + "d" * 64,
        "image.name": "r/comfyui:base-common-1,r/comfyui:base-common-2",
    },
    "buildx.build.warnings": [],
}


def test_recorded_buildkit_0_8_digest_is_the_image_id():
    result = parse_metadata(RECORDED_BUILDKIT_0_8)["a"]
    assert (
        result.image_id == "sha256:f81d2a9b6e029e3c0f975c9c085036c7f0af5a84f5eeeebd0c207e99956d14b9"
    )
    assert result.digest == ""  # no manifest before a push
    assert result.build_ref.startswith("default/default/")


def test_newer_metadata_separates_config_and_manifest_digests():
    results = parse_metadata(NEWER)
    assert set(results) == {"base-common"}
    result = results["base-common"]
    assert result.image_id == "sha256:" + "c" * 64
    assert result.digest == "sha256:" + "d" * 64
    assert result.image_names == ("r/comfyui:base-common-1", "r/comfyui:base-common-2")


def test_missing_file_means_nothing_built_and_garbage_is_named(tmp_path):
    assert read_metadata(tmp_path / "none.json") == {}
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(MetadataError, match=r"bad\.json: not JSON"):
        read_metadata(bad)


# ---------------------------------------------------------------------------------------------


def spec(node: str, parent_tag: str, **extra) -> dict:
    return {
        "context": f"/srv/build/{node}",
        "args": {"PARENT": parent_tag},
        "tags": [f"r/comfyui:{node}-h"],
        "labels": {"io.aiclipse.node": node},
        "secret": ["id=ca,src=/etc/ssl/certs/ca-certificates.crt"],
        **extra,
    }


def bake_of(*cpu_only: bool) -> dict:
    """base-common -> base-cpu -> tiny-cpu, and base-gpu -> tiny-gpu beside them."""
    targets = {
        "base-common": spec("base-common", "r/os-base@sha256:" + "0" * 64),
        "base-cpu": spec("base-cpu", "r/comfyui:base-common-h"),
        "tiny-cpu": spec("tiny-cpu", "r/comfyui:base-cpu-h"),
        "base-gpu": spec("base-gpu", "r/comfyui:base-common-h"),
        "tiny-gpu": spec("tiny-gpu", "r/comfyui:base-gpu-h"),
    }
    groups = {
        "level1": ["base-common"],
        "level2": ["base-cpu", "base-gpu"],
        "level3": ["tiny-cpu", "tiny-gpu"],
    }
    return {
        "group": {name: {"targets": ids} for name, ids in groups.items()},
        "target": targets,
    }


class FakeBake:
    """Stands in for `docker buildx bake`: a call fails when it holds a failing target."""

    def __init__(self, failing: set[str] = frozenset()):
        self.failing = failing
        self.calls: list[list[str]] = []

    def __call__(self, argv, log: Path, timeout: float) -> int:
        if argv[2] == "build":  # docker buildx build: the target is the node label
            label = next(a for a in argv if a.startswith("io.aiclipse.node="))
            targets = [label.split("=", 1)[1]]
        else:
            after = argv[argv.index("--metadata-file") + 2 :]
            targets = [a for a in after if not a.startswith("-")]
        self.calls.append(targets)
        metadata = Path(argv[argv.index("--metadata-file") + 1])
        bad = [t for t in targets if t in self.failing]
        lines = [f"#1 [{t} 1/2] FROM ..." for t in targets]
        if bad:
            lines += [f"#9 [{bad[0]} 2/2] RUN false", "ERROR: failed to solve: exit code: 1"]
            log.write_text("\n".join(lines) + "\n")
            return 1
        log.write_text("\n".join(lines) + "\n")
        found = {t: {"containerimage.digest": f"sha256:{t}"} for t in targets}
        metadata.write_text(json.dumps(found[targets[0]] if argv[2] == "build" else found))
        return 0


def test_levels_and_parents_come_from_the_bake_file():
    outcomes = targets_of(bake_of())
    assert list(outcomes) == ["base-common", "base-cpu", "base-gpu", "tiny-cpu", "tiny-gpu"]
    assert outcomes["tiny-cpu"].parent == "base-cpu"
    assert outcomes["base-common"].parent == ""  # the OS base is not built here
    assert batches(outcomes, named_contexts=False) == [
        ["base-common"],
        ["base-cpu", "base-gpu"],
        ["tiny-cpu", "tiny-gpu"],
    ]
    assert len(batches(outcomes, named_contexts=True)) == 1


def test_level_by_level_all_built_in_three_calls(tmp_path):
    fake = FakeBake()
    report = Baker("bake.json", bake_of(), tmp_path, runner=fake).run()
    assert fake.calls == [["base-common"], ["base-cpu", "base-gpu"], ["tiny-cpu", "tiny-gpu"]]
    out = report.as_dict()
    assert out["built"] == ["base-common", "base-cpu", "base-gpu", "tiny-cpu", "tiny-gpu"]
    assert out["outcomes"]["tiny-cpu"]["image_id"] == "sha256:tiny-cpu"
    assert out["outcomes"]["tiny-cpu"]["log"] == str(tmp_path / "level3.log")
    argv = out["calls"][0]["argv"]
    assert argv[:4] == ["docker", "buildx", "bake", "--file"] and "--progress=plain" in argv


def test_a_failing_target_hides_nothing(tmp_path):
    """base-gpu fails: base-cpu and tiny-cpu are built, tiny-gpu is skipped naming why."""
    fake = FakeBake(failing={"base-gpu"})
    report = Baker("bake.json", bake_of(), tmp_path, runner=fake).run().as_dict()
    results = report["outcomes"]
    assert results["base-cpu"]["status"] == "built"
    assert results["tiny-cpu"]["status"] == "built"
    assert results["base-gpu"]["status"] == "failed"
    assert results["base-gpu"]["reason"] == "ERROR: failed to solve: exit code: 1"
    assert results["base-gpu"]["tail"][-2] == "#9 [base-gpu 2/2] RUN false"
    assert results["base-gpu"]["log"] == str(tmp_path / "level2.base-gpu.log")
    assert results["tiny-gpu"]["status"] == "skipped"
    assert results["tiny-gpu"]["reason"] == "parent base-gpu failed"
    # level 2 together, then each of its targets alone; level 3 without the skipped one
    assert fake.calls == [
        ["base-common"],
        ["base-cpu", "base-gpu"],
        ["base-cpu"],
        ["base-gpu"],
        ["tiny-cpu"],
    ]


def test_named_contexts_build_in_one_call_and_fall_back_per_target(tmp_path):
    fake = FakeBake()
    Baker("bake.json", bake_of(), tmp_path, runner=fake, named_contexts=True).run()
    assert len(fake.calls) == 1 and len(fake.calls[0]) == 5
    fake = FakeBake(failing={"base-common"})
    report = Baker("b.json", bake_of(), tmp_path, runner=fake, named_contexts=True).run()
    out = report.as_dict()
    assert out["failed"] == ["base-common"]
    assert out["skipped"] == ["base-cpu", "base-gpu", "tiny-cpu", "tiny-gpu"]
    assert fake.calls[1:] == [["base-common"]]  # nothing else is tried once the root failed


def test_nothing_stale_means_no_call_and_the_plan_says_cached(tmp_path):
    fake = FakeBake()
    nodes = [
        {"name": "os-base", "status": "external"},
        {"name": "base-common", "status": "cached", "digest": "sha256:aa", "ref": "r:bc"},
        {"name": "tiny-cpu", "status": "skipped", "reason": "base-cpu skipped", "ref": ""},
    ]
    empty = {"group": {"default": {"targets": []}}, "target": {}}
    report = Baker("bake.json", empty, tmp_path / "logs", runner=fake).run(plan_nodes=nodes)
    out = report.as_dict()
    assert fake.calls == [] and out["calls"] == []
    assert not (tmp_path / "logs").exists()
    assert (
        out["cached"] == ["base-common"] and out["outcomes"]["base-common"]["digest"] == "sha256:aa"
    )
    assert out["skipped"] == ["tiny-cpu"]
    assert out["table"][1].split()[:2] == ["cached", "base-common"]


def test_check_mode_builds_nothing(tmp_path):
    fake = FakeBake()
    out = Baker("b.json", bake_of(), tmp_path, runner=fake).run(check_mode=True).as_dict()
    assert fake.calls == []
    assert {r["status"] for r in out["outcomes"].values()} == {"planned"}


def test_entitlements_only_where_bake_knows_allow():
    bake = bake_of()
    bake["target"]["base-common"]["network"] = "host"
    assert entitlements(bake, "github.com/docker/buildx 0.13.1+ds1 0.13.1+ds1-3") == []
    allow = entitlements(bake, "v0.20.1", ["security.insecure"])
    assert allow == [
        "network.host",
        "fs.read=/etc/ssl/certs/ca-certificates.crt",
        "fs.read=/srv/build",
        "security.insecure",
    ]


def test_a_build_network_means_docker_buildx_build_per_target(tmp_path):
    """Bake files cannot carry `network` (buildx drops it): build each target by itself."""
    bake = bake_of()
    for target in bake["target"].values():
        target["network"] = "host"
    fake = FakeBake(failing={"base-gpu"})
    out = Baker("bake.json", bake, tmp_path, runner=fake).run().as_dict()
    assert fake.calls == [["base-common"], ["base-cpu"], ["base-gpu"], ["tiny-cpu"]]
    assert out["outcomes"]["tiny-cpu"]["image_id"] == "sha256:tiny-cpu"
    assert out["outcomes"]["tiny-gpu"]["reason"] == "parent base-gpu failed"
    argv = build_argv(bake["target"]["tiny-cpu"], tmp_path / "m.json")
    assert argv[:3] == ["docker", "buildx", "build"] and argv[-1] == "/srv/build/tiny-cpu"
    assert argv[argv.index("--network") : argv.index("--network") + 2] == ["--network", "host"]
    assert "--secret" in argv and "id=ca,src=/etc/ssl/certs/ca-certificates.crt" in argv
    assert "PARENT=r/comfyui:base-cpu-h" in argv
