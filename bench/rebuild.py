#!/usr/bin/env python3
"""What a rebuild costs: prints figures (no pass/fail). Goals from issue 4: a no-op rebuild
under 5 s and 0 bytes; a one-package change pushes <= 1.1 x that layer; 0 duplicated bytes.

Run as root with the project's virtualenv after ``./farm test docker`` prepared the engine:
``.venv/bin/python bench/rebuild.py``. It drives the real ``ansible-playbook build.yml`` for
the test template ``tiny`` on ``cpu`` against a registry of its own on a free loopback port,
with ComfyUI (the test fixture) served by a git daemon on loopback, a stand-in torch wheel
(the real one is 183 MB, the CUDA ones several GB) and two package layers resolved against
PyPI as in production. Then:

1. cold: everything built and pushed;
2. no-op: build.yml again, and later a quiet nightly.yml (the whole playbook, prepare
   included; the time per role from ansible.posix.profile_roles), against ``docker buildx
   build`` of the same targets with a warm cache (the farm's own command per target: buildx
   0.13 drops ``network`` from bake files);
3. one package moved (pillow in the "essentials" layer): time, bytes pushed, the layer;
4. duplicated bytes inside base-cpu (files a later layer shadows or deletes) against a naive
   Dockerfile whose layers install the same lists cumulatively (seed 2's "old approach").

Everything it makes (images, registry, folders) is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "module_utils")]

import ansible.module_utils  # noqa: E402

ansible.module_utils.__path__.append(str(REPO / "module_utils"))

from ansible.module_utils.bake_run import build_argv  # noqa: E402
from ansible.module_utils.report import human  # noqa: E402
from gitserver import GitServer, make_comfy_sources  # noqa: E402
from helpers import free_port, playbook  # noqa: E402
from wheels import make_torch_standin  # noqa: E402

ESSENTIALS = ["numpy==2.1.3", "pillow==11.0.0", "pyyaml==6.0.2"]
EXTENDED = ["einops==0.8.0", "tqdm==4.67.1"]
MOVED = ("pillow==11.0.0", "pillow==11.1.0")
ROLE_TIME = re.compile(r"^(\w+) -+ (\d+\.\d+)s$", re.M)


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {done.stderr[-2000:]}")
    return done.stdout


def run_build(extra: dict, label: str, play: str = "build.yml") -> tuple[float, dict, str]:
    os.environ["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_roles"
    start = time.monotonic()
    run = playbook(play, extra)
    seconds = time.monotonic() - start
    if run.returncode != 0:
        raise SystemExit(f"{label}: {play} failed\n{run.stdout[-5000:]}")
    report = json.loads(
        (Path(extra["aiclipse_reports_dir"]) / "latest" / "report.json").read_text()
    )
    return seconds, report, run.stdout


def warm_buildx(bake: dict, metadata: Path) -> float:
    """The same targets with ``docker buildx build``, cache warm, in level order."""
    start = time.monotonic()
    for name in ("base-common", "base-cpu", "tiny-cpu"):
        spec = bake["target"][name]
        sh(*build_argv(spec, metadata))
    return time.monotonic() - start


def layer_files(image: str, work: Path) -> list[dict[str, int]]:
    """Per layer of ``image`` (bottom first): {path: size} of regular files, whiteouts as -1."""
    archive = work / "image.tar"
    sh("docker", "save", "-o", str(archive), image)
    layers = []
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        for name in manifest[0]["Layers"]:
            files: dict[str, int] = {}
            with tarfile.open(fileobj=outer.extractfile(name)) as layer:
                for member in layer:
                    base = member.name.rsplit("/", 1)[-1]
                    if base == ".wh..wh..opq":  # an opaque folder hides all below it
                        files[member.name.rsplit("/", 1)[0]] = -1
                    elif base.startswith(".wh."):
                        files[member.name.replace(".wh.", "", 1)] = -1
                    elif member.isfile():
                        files[member.name] = member.size
            layers.append(files)
    archive.unlink()
    return layers


def duplicated(layers: list[dict[str, int]], skip: int) -> tuple[int, int]:
    """(bytes of files in layers ``skip``.. that a later layer replaces or deletes, bytes of
    those layers in all): the bytes an image carries twice. A whiteout of a folder covers
    every file under it."""
    dup = total = 0
    for index in range(skip, len(layers)):
        later: set[str] = set()
        for above in layers[index + 1 :]:
            later |= set(above)
        for path, size in layers[index].items():
            if size <= 0:
                continue
            total += size
            parts = path.split("/")
            if any("/".join(parts[:n]) in later for n in range(1, len(parts) + 1)):
                dup += size
    return dup, total


NAIVE = """\
# Seed 2's "old approach": each layer installs the lists so far, cumulatively.
ARG PARENT
FROM ${{PARENT}} AS base
{stages}
FROM base
{copies}
"""
STAGE = """\
FROM base AS layer{n}
RUN --mount=type=secret,id=ca,required=true PIP_CERT=/run/secrets/ca \\
    /opt/venv/bin/pip install --no-compile --prefix /layer {specs}
"""


def naive_image(parent: str, lists: list[list[str]], ca: str, work: Path) -> str:
    ctx = work / "naive"
    ctx.mkdir()
    stages, copies, so_far = [], [], []
    for n, specs in enumerate(lists, start=1):
        so_far += specs
        stages.append(STAGE.format(n=n, specs=" ".join(so_far)))
        copies.append(f"COPY --from=layer{n} /layer/ /opt/venv/")
    (ctx / "Dockerfile").write_text(
        NAIVE.format(stages="\n".join(stages), copies="\n".join(copies))
    )
    tag = f"aiclipse-bench-naive:{work.name.lower()}"
    sh(
        "docker", "buildx", "build", "--load", "--network", "host", "--progress=plain",
        "--secret", f"id=ca,src={ca}", "--build-arg", f"PARENT={parent}", "-t", tag, str(ctx),
    )  # fmt: skip
    return tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aiclipse-bench-rebuild-"))
    listen = f"127.0.0.1:{free_port()}"
    safe = listen.replace(".", "_").replace(":", "_")
    refs: set[str] = set()
    try:
        commits = make_comfy_sources(work / "git")
        wheels = work / "wheels"
        make_torch_standin(wheels)
        templates = work / "templates"  # nightly.yml writes node locks beside manifests
        shutil.copytree(REPO / "tests" / "fixtures" / "templates" / "tiny", templates / "tiny")
        with GitServer(work / "git") as git:
            extra = {
                "local_registry_listen": listen,
                "local_registry_data_dir": str(work / "registry"),
                "registry": f"{listen}/aiclipse-bench",
                "template": "tiny",
                "gpu": "cpu",
                "aiclipse_templates_dir": str(templates),
                "aiclipse_build_dir": str(work / "build"),
                "aiclipse_cache_dir": str(work / "cache"),
                "aiclipse_reports_dir": str(work / "reports"),
                "comfyui": {"repo": git.url("ComfyUI"), "ref": commits["ComfyUI"]},
                "manager": {
                    "repo": git.url("ComfyUI-Manager"),
                    "ref": commits["ComfyUI-Manager"],
                },
                "gpu_targets": {
                    "cpu": {"cuda": "cpu", "torch": "2.13.0", "torch_wheelhouse": str(wheels)}
                },
                "package_layers": [
                    {"name": "essentials", "specs": ESSENTIALS},
                    {"name": "extended", "specs": EXTENDED},
                ],
                "package_layers_exclude": [],
                "build_network": "host",
                "image_jupyter_spec": "",
            }
            cold_s, cold, _ = run_build(extra, "cold")
            plan = json.loads((work / "build" / "plan.json").read_text())
            refs |= {n["ref"] for n in plan["nodes"] if n["kind"] != "os-base"}
            bake = json.loads((work / "build" / "bake.json").read_text())
            noop_s, noop, out = run_build(extra, "no-op")
            roles = {m[1]: float(m[2]) for m in ROLE_TIME.finditer(out)}
            warm_s = warm_buildx(bake, work / "metadata.json")

            moved = [MOVED[1] if s == MOVED[0] else s for s in ESSENTIALS]
            changed = {**extra, "package_layers": [
                {"name": "essentials", "specs": moved}, {"name": "extended", "specs": EXTENDED},
            ]}  # fmt: skip
            change_s, change, _ = run_build(changed, "one-package change")
            plan2 = json.loads((work / "build" / "plan.json").read_text())
            refs |= {n["ref"] for n in plan2["nodes"] if n["kind"] != "os-base"}
            nightly = {**changed, "nightly_lock_file": str(work / "nightly.lock")}
            quiet_s, quiet, out = run_build(nightly, "quiet nightly", "nightly.yml")
            quiet_roles = {m[1]: float(m[2]) for m in ROLE_TIME.finditer(out)}

        before = {i["node"]: i for i in cold["images"]}
        after = {i["node"]: i for i in change["images"]}
        old = {layer["digest"] for layer in before["base-cpu"]["layers"]}
        new_layers = [x for x in after["base-cpu"]["layers"] if x["digest"] not in old]
        layer = max(x["size"] for x in new_layers)

        base_cpu = next(n["ref"] for n in plan2["nodes"] if n["name"] == "base-cpu")
        base_common = next(n["ref"] for n in plan2["nodes"] if n["name"] == "base-common")
        parent_layers = len(layer_files(base_common, work))
        ours = layer_files(base_cpu, work)
        ca = "/etc/ssl/certs/ca-certificates.crt"
        naive_tag = naive_image(base_common, [moved, EXTENDED], ca, work)
        refs.add(naive_tag)
        naive = layer_files(naive_tag, work)
        ours_dup, ours_total = duplicated(ours, parent_layers)
        naive_dup, naive_total = duplicated(naive, parent_layers)

        print(
            f"cold build.yml (3 images built, verified, pushed): {cold_s:.1f} s, "
            f"{human(cold['summary']['bytes_pushed'])} pushed"
        )
        print(
            f"no-op build.yml, whole playbook: {noop_s:.1f} s, "
            f"{noop['summary']['bytes_pushed']} bytes pushed"
        )
        print("  per role: " + ", ".join(f"{k} {v:.1f} s" for k, v in roles.items()))
        print(f"docker buildx build of the same 3 targets, warm cache: {warm_s:.1f} s")
        print(
            f"quiet nightly.yml (nothing moved upstream): {quiet_s:.1f} s, "
            f"{quiet['summary']['bytes_pushed']} bytes pushed, built {quiet['summary']['built']}"
        )
        print("  per role: " + ", ".join(f"{k} {v:.1f} s" for k, v in quiet_roles.items()))
        print(
            f"one package moved ({MOVED[0]} -> {MOVED[1]}): {change_s:.1f} s, "
            f"{human(change['summary']['bytes_pushed'])} pushed; the essentials layer "
            f"{human(layer)}: {change['summary']['bytes_pushed'] / layer:.2f} x the layer; "
            f"cold pushed {human(cold['summary']['bytes_pushed'])}"
        )
        print(
            f"duplicated bytes in base-cpu's own layers: {ours_dup} of {human(ours_total)} "
            f"(farm) vs {human(naive_dup)} of {human(naive_total)} (naive cumulative)"
        )
    finally:
        subprocess.run(["pkill", "-f", f"registry-{safe}"], check=False)
        images = subprocess.run(
            ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
            capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
        refs |= {ref for ref in images if ref.startswith(f"{listen}/")}  # the OS base too
        for ref in refs:
            subprocess.run(["docker", "rmi", "-f", ref], capture_output=True, check=False)
        for path in (Path(f"/etc/aiclipse/registry-{safe}.yml"),
                     Path(f"/var/log/aiclipse-registry-{safe}.log")):  # fmt: skip
            path.unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
