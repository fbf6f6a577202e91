"""Distributions with no wheel: locked by their sdist's hash, built in base-<gpu>'s sdist stage.

Real pip resolves offline against wheels and sdists this test makes (the sdists build with an
in-tree backend, so pip prepares their metadata without an index). The sdist stage's own
shell, taken from the rendered Dockerfile, runs here against the host's pip: it builds the
wheel, and a failing build names the package and ends with the compiler's lines.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import gitserver
import pytest
from ansible.module_utils.config import load_config
from ansible.module_utils.graph import Settings, make_plan
from ansible.module_utils.package_layers import ResolveError, ResolveOptions, resolve
from ansible.module_utils.sdists import missing_requirements
from ansible.module_utils.templates import load_template
from sdist_maker import make_sdist
from wheels import make_wheel

REPO = Path(__file__).resolve().parents[2]
OS_BASE = "127.0.0.1:5999/t/os-base@sha256:" + "a" * 64


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdists")
    wheels = root / "wheels"
    make_wheel(wheels, "torch", "2.13.0+cpu")
    make_wheel(wheels, "torchvision", "0.28.0+cpu", ("torch==2.13.0",))
    make_wheel(wheels, "numpy", "2.1.0")
    make_wheel(wheels, "yacs", "0.1.8", ("numpy",))
    # fvcore's shape: an sdist that needs another sdist (iopath) and wheels
    make_sdist(wheels, "iopath", "0.1.9", ("numpy",))
    make_sdist(wheels, "fvcore", "0.1.5", ("iopath<0.1.10,>=0.1.7", "yacs"))
    make_sdist(wheels, "broken", "1.0", fail="native.h: No such file or directory")
    comfy, manager = gitserver.make_plan_sources(root, "torch\nnumpy\n")
    gitserver.make_empty_template(root / "templates")
    return {
        "root": root,
        "wheels": wheels,
        "templates": root / "templates",
        "config": {
            "registry": "127.0.0.1:5999/t",
            "gpu_targets": {
                "cpu": {"cuda": "cpu", "torch": "2.13.0", "torch_wheelhouse": str(wheels)},
            },
            "package_layers": [{"name": "vision", "specs": ["fvcore"]}],
            "comfyui": {"repo": f"file://{root / 'comfyui'}", "ref": comfy},
            "manager": {"repo": f"file://{root / 'manager'}", "ref": manager},
        },
    }


def offline(world) -> ResolveOptions:
    return ResolveOptions(no_index=True, find_links=(str(world["wheels"]),))


def plan(world, build: Path, config: dict | None = None):
    settings = Settings(
        repo_root=REPO,
        build_dir=build,
        os_base_ref=OS_BASE,
        cache_dir=world["root"] / "cache",
        resolve_options=offline(world),
    )
    tpl = load_template(world["templates"], "tiny")
    return make_plan(load_config(config or world["config"]), [tpl], settings, lambda ref: None)


def test_pip_names_what_it_found_no_wheel_for() -> None:
    output = (
        "ERROR: Could not find a version that satisfies the requirement fairscale==0.4.13 "
        "(from versions: none)\nERROR: No matching distribution found for fairscale==0.4.13\n"
        "ERROR: Could not find a version that satisfies the requirement iopath<0.1.10,>=0.1.7 "
        "(from fvcore) (from versions: 0.1.2)\n"
    )
    assert missing_requirements(output) == [
        ("fairscale==0.4.13", "none"),
        ("iopath<0.1.10,>=0.1.7", "0.1.2"),
    ]


def test_sdists_are_locked_by_their_hash_and_resolved_with_the_layers(world, tmp_path):
    p = plan(world, tmp_path / "b")
    base = p.by_name()["base-cpu"]
    vision = next(layer for layer in base.layers if layer["name"] == "vision")
    assert vision["pins"] == ["fvcore==0.1.5", "iopath==0.1.9", "yacs==0.1.8"]
    assert vision["sdists"] == ["fvcore==0.1.5", "iopath==0.1.9"]  # the plan marks them
    context = tmp_path / "b" / "base-cpu"
    # the wheels' lock holds yacs alone; each sdist has its own, pinned by the sdist's sha256
    assert (context / "layers" / "03-vision.txt").read_text().startswith("yacs==0.1.8 --hash")
    sdist = world["wheels"] / "fvcore-0.1.5.tar.gz"
    digest = __import__("hashlib").sha256(sdist.read_bytes()).hexdigest()
    lock = (context / "sdists" / "fvcore-0.1.5.txt").read_text()
    assert lock.startswith("# build: sdist") and f"fvcore==0.1.5 --hash=sha256:{digest}" in lock
    assert (context / "sdists" / "fvcore-0.1.5" / "fvcore-0.1.5.tar.gz").is_file()
    dockerfile = (context / "Dockerfile").read_text()
    # compilers only in the build stage; the image is FROM base and copies only the layers
    toolchain, final = dockerfile.split("\nFROM base\n")
    assert "build-essential" in toolchain and "build-essential" not in final
    assert "FROM sdist-toolchain AS sdist-fvcore-0_1_5" in dockerfile
    assert "from=sdist-fvcore-0_1_5,source=/out,target=/ctx/built/fvcore-0_1_5" in dockerfile
    assert "sdist-" not in final.replace("sdist-toolchain", "")
    # the sdist's hash is in the node's hash: its lock file is in the context
    assert "sdists/fvcore-0.1.5.txt" in base.files
    cached = json.loads(next((world["root"] / "cache" / "resolutions").glob("*.json")).read_text())
    assert set(cached["sdists"]) == {"fvcore", "iopath"}


def test_unknown_names_are_reported_at_once(world, tmp_path):
    with pytest.raises(ResolveError) as info:
        resolve(
            [("x", ["nosuch-one", "numpy", "nosuch-two>=2"])],
            "3.11",
            "manylinux_2_28_x86_64",
            options=offline(world),
        )
    message = str(info.value)
    assert message.startswith(
        "no index or wheelhouse has (for python 3.11 on manylinux_2_28_x86_64) nosuch-one "
        "(a layer spec; no version"
    )
    assert "nosuch-two>=2 (a layer spec; no version" in message and "Fix:" in message


def stage_shell(dockerfile: str, stage: str) -> str:
    """The RUN of one sdist stage, without its mounts, as a shell command."""
    block = dockerfile.split(f"AS sdist-{stage}\n", 1)[1].split("\nFROM ", 1)[0]
    body = block.removeprefix("RUN ").replace("\\\n", " ")
    return re.sub(r"--mount=\S+", "", body)


@pytest.mark.parametrize("name", ["iopath", "broken"])
def test_the_sdist_stage_builds_the_wheel_or_names_the_failure(world, tmp_path, name):
    config = json.loads(json.dumps(world["config"]))
    config["package_layers"] = [{"name": "vision", "specs": [name]}]
    plan(world, tmp_path / "b", config)
    context = tmp_path / "b" / "base-cpu"
    version = "0.1.9" if name == "iopath" else "1.0"
    shell = stage_shell((context / "Dockerfile").read_text(), f"{name}-{version.replace('.', '_')}")
    out, log = tmp_path / "out", tmp_path / "build.log"
    shell = (
        shell.replace("/ctx/sdist.txt", str(context / "sdists" / f"{name}-{version}.txt"))
        .replace("/ctx/src", str(context / "sdists" / f"{name}-{version}"))
        .replace("/opt/venv/bin/pip", f"{sys.executable} -m pip")
        .replace("/out", str(out))
        .replace("/tmp/sdist-build.log", str(log))
    )
    env = {"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env=env)
    if name == "iopath":
        assert done.returncode == 0, done.stdout + done.stderr
        assert [w.name for w in out.iterdir()] == ["iopath-0.1.9-py3-none-any.whl"]
    else:
        assert done.returncode == 1
        assert done.stdout.startswith("sdist build failed: broken==1.0 (no wheel for the target")
        assert "fatal error: native.h: No such file or directory" in done.stdout
