"""Sources of the nightly_schedule scenario's builds, made the way tests/docker makes them.

    python fixtures.py ROOT

writes, under ROOT (a new or empty folder):

- ``git/ComfyUI`` and ``git/ComfyUI-Manager``: repositories that prepare.yml serves with
  ``git daemon`` on the loopback port chosen here;
- ``wheels/``: a stand-in ``torch==2.13.0+cpu`` wheel and the one package layer's wheel;
- ``templates/tiny``: a copy of tests/fixtures/templates/tiny (nightly.yml writes its node lock
  beside the manifest, so the repository's copy is never used);
- ``build-vars.json``: the extra vars of the cold build.yml run and of the scheduled nightly
  (a registry of the scenario's own on another free loopback port, data under ROOT);
- ``scenario.json``: the ports, for prepare.yml and destroy.yml.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from gitserver import make_comfy_sources  # noqa: E402
from helpers import free_port  # noqa: E402
from wheels import make_torch_standin, make_wheel  # noqa: E402


def make_sources(root: Path) -> dict[str, str]:
    """The two git repositories under root/git; their commits by name."""
    return make_comfy_sources(root / "git")


def make_wheels(folder: Path) -> None:
    make_torch_standin(folder, ("aiclipse-test-dep",))
    make_wheel(folder, "aiclipse-test-dep", "1.0.0")
    make_wheel(folder, "aiclipse-test-essential", "2.0.0")


def build_vars(root: Path, listen: str, git_port: int, commits: dict[str, str]) -> dict:
    """What tests/docker/test_build.py gives build.yml, with every path under root."""

    def source(name: str) -> dict[str, str]:
        return {"repo": f"git://127.0.0.1:{git_port}/{name}", "ref": commits[name]}

    return {
        "local_registry_listen": listen,
        "local_registry_data_dir": str(root / "registry"),
        "registry": f"{listen}/aiclipse-molecule",
        "gpu": "cpu",
        "aiclipse_templates_dir": str(root / "templates"),
        "aiclipse_build_dir": str(root / "build"),
        "aiclipse_cache_dir": str(root / "cache"),
        "aiclipse_reports_dir": str(root / "reports"),
        "os_base_work_dir": str(root / "os-base"),
        "nightly_lock_file": str(root / "nightly.lock"),
        "comfyui": source("ComfyUI"),
        "manager": source("ComfyUI-Manager"),
        "gpu_targets": {
            "cpu": {"cuda": "cpu", "torch": "2.13.0", "torch_wheelhouse": str(root / "wheels")}
        },
        "package_layers": [{"name": "essentials", "specs": ["aiclipse-test-essential==2.0.0"]}],
        "package_layers_exclude": [],
        "build_network": "host",
        "image_jupyter_spec": "",
    }


def main(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    commits = make_sources(root)
    make_wheels(root / "wheels")
    shutil.copytree(REPO / "tests" / "fixtures" / "templates" / "tiny", root / "templates" / "tiny")
    registry_port, git_port = free_port(), free_port()
    while git_port == registry_port:
        git_port = free_port()
    listen = f"127.0.0.1:{registry_port}"
    (root / "build-vars.json").write_text(
        json.dumps(build_vars(root, listen, git_port, commits), indent=2) + "\n"
    )
    (root / "scenario.json").write_text(
        json.dumps({"registry_listen": listen, "git_port": git_port}, indent=2) + "\n"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} ROOT")
    main(Path(sys.argv[1]))
