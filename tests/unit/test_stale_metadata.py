"""base-<gpu> leaves no stale metadata: a distribution the parent's venv holds (venv's own
setuptools) is uninstalled before a layer with its pinned version is copied over the venv.

The step's own shell, taken from the rendered Dockerfile, runs here against a real venv; the
layer is installed with ``--prefix`` and copied over it as the image's COPY does. Without the
step the copy leaves two setuptools .dist-info folders (shown first, so the test can fail).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ansible.module_utils.graph import _environment
from wheels import make_wheel

REPO = Path(__file__).resolve().parents[2]


def uninstall_step(constraints: Path, python: Path) -> str:
    dockerfile = (
        _environment(REPO)
        .get_template("Dockerfile.base-gpu.j2")
        .render(gpu="cpu", layers=[], copy_link=False, arch_list="")
    )
    block = dockerfile.split("\nFROM base\n", 1)[1].split("\nCOPY ", 1)[0]
    run = block[block.index("RUN ") :].removeprefix("RUN ").replace("\\\n", "")
    run = re.sub(r"--mount=\S+", "", run)
    return run.replace("/ctx/constraints.txt", str(constraints)).replace(
        "/opt/venv/bin/python", str(python)
    )


def dist_infos(venv: Path, name: str) -> list[str]:
    site = next(venv.glob("lib/python3*/site-packages"))
    return sorted(p.name for p in site.glob(f"{name}-*.dist-info"))


@pytest.mark.parametrize("step", [False, True])
def test_the_layer_copy_leaves_one_dist_info_per_distribution(tmp_path: Path, step: bool) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", "HOME": str(tmp_path)}
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-index", "--no-deps", str(
        make_wheel(tmp_path / "w", "setuptools", "66.1.1", files={"setuptools/__init__.py": ""})
    )], check=True, env=env)  # fmt: skip
    assert dist_infos(venv, "setuptools") == ["setuptools-66.1.1.dist-info"]
    # the layer: setuptools 84.2.1 with its dependant, installed with --prefix
    wheels = tmp_path / "layer-wheels"
    make_wheel(wheels, "setuptools", "84.2.1", files={"setuptools/__init__.py": "v = 84\n"})
    make_wheel(wheels, "needs-new-setuptools", "1.0", ("setuptools>=77.0.3",))
    layer = tmp_path / "layer"
    # (in a stage of its own, as the Dockerfile's layer stages: the venv is not touched)
    subprocess.run([sys.executable, "-m", "pip", "-q", "install", "--no-index", "--no-deps",
                    "--ignore-installed", "--prefix", str(layer),
                    *map(str, sorted(wheels.iterdir()))], check=True, env=env)  # fmt: skip
    assert dist_infos(venv, "setuptools") == ["setuptools-66.1.1.dist-info"]
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("needs-new-setuptools==1.0\nsetuptools==84.2.1\n")
    if step:
        done = subprocess.run(
            ["bash", "-c", uninstall_step(constraints, python)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "replaced by the layers: setuptools" in done.stdout
    shutil.copytree(layer, venv, dirs_exist_ok=True)  # COPY --from=layer-... /layer/ /opt/venv/
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, env=env)
    if step:
        assert dist_infos(venv, "setuptools") == ["setuptools-84.2.1.dist-info"]
        assert check.returncode == 0, check.stdout
    else:  # what the image had before the step
        assert len(dist_infos(venv, "setuptools")) == 2
