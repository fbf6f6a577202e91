"""The real ComfyUI-Manager package reads the security level that start.sh enforces.

What it proves: ``aiclipse_config.py manager-config --mode package`` (start.sh's step for an
image whose ComfyUI names the ``comfyui-manager`` package) writes the config where that
package, installed from PyPI, looks for it, and the package's own config reader
(``comfyui_manager.glob.manager_core.read_config``, what its server's security checks ask)
then reports the image's level, also over a weaker config left on the volume. The reader
is first shown to read that weaker level from the same file, so the check can fail.

ComfyUI itself is two small stand-ins: ``folder_paths`` with ComfyUI's system-user
contract (``get_system_user_directory(name)`` is ``<user dir>/__<name>``, ComfyUI >= 0.4)
and ``comfy.cli_args``. If the package asks for another folder than ``manager``, the path
it reports is not ``user/__manager/config.ini`` and the test fails.

Needs PyPI: skipped when it cannot be reached, unless AICLIPSE_NETWORK_TESTS=1 (then a
failure). The package goes in with --no-deps, beside the few packages its config reader
imports (its own dependencies include transformers, which this needs not).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import aiclipse_config
import pytest

pytestmark = pytest.mark.network

MANAGER_SPEC = "comfyui-manager==4.3"  # the 4.x line ComfyUI's manager_requirements.txt pins
# what comfyui_manager.glob.manager_core imports (ComfyUI's own requirements bring them)
READER_DEPS = (
    "aiohttp",
    "GitPython",
    "tqdm",
    "PyYAML",
    "rich",
    "packaging",
    "toml",
    "requests",
    "huggingface_hub",
)


def pip_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("PIP_NO_INDEX", "PIP_FIND_LINKS", "PIP_CONSTRAINT"):
        env.pop(key, None)
    return env


def need_pypi(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode == 0:
        return
    why = f"{what} failed (PyPI unreachable?): {(done.stdout + done.stderr).strip()[-400:]}"
    if os.environ.get("AICLIPSE_NETWORK_TESTS") == "1":
        pytest.fail(why)
    pytest.skip(why + " — set AICLIPSE_NETWORK_TESTS=1 to make this a failure")


@pytest.fixture(scope="module")
def manager_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("manager-package")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    options = ["--timeout", "30", "--retries", "1"]
    wheels = root / "wheels"
    done = subprocess.run(
        [*pip, "download", "--no-deps", "-q", *options, "-d", str(wheels), MANAGER_SPEC],
        capture_output=True, text=True, env=pip_env(), timeout=300, check=False,
    )  # fmt: skip
    need_pypi(done, f"pip download {MANAGER_SPEC}")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    vpip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    (wheel,) = wheels.glob("comfyui_manager-*.whl")
    subprocess.run([*vpip, "install", "-q", "--no-deps", str(wheel)], check=True, env=pip_env())
    done = subprocess.run(
        [*vpip, "install", "-q", *options, *READER_DEPS],
        capture_output=True, text=True, env=pip_env(), timeout=600, check=False,
    )  # fmt: skip
    need_pypi(done, "pip install of the config reader's imports")
    stand_in = root / "ComfyUI"
    (stand_in / "comfy").mkdir(parents=True)
    (stand_in / "folder_paths.py").write_text(
        textwrap.dedent(
            """\
            import os
            user_directory = None
            def get_user_directory():
                return user_directory
            def set_user_directory(path):
                global user_directory
                user_directory = path
            def get_system_user_directory(name="system"):
                return os.path.join(get_user_directory(), "__" + name)
            """
        )
    )
    (stand_in / "comfy" / "__init__.py").write_text("")
    (stand_in / "comfy" / "cli_args.py").write_text(
        "import argparse\nargs = argparse.Namespace(enable_manager=True, "
        "enable_manager_legacy_ui=False, listen='0.0.0.0')\n"
    )
    return python


READ = """\
import json, sys
import folder_paths
folder_paths.set_user_directory(sys.argv[1])
from comfyui_manager.common import context
from comfyui_manager.glob import manager_core
print("RESULT " + json.dumps({
    "path": context.manager_config_path,
    "security_level": manager_core.read_config()["security_level"],
}))
"""


def read_with_the_package(python: Path, user: Path) -> dict[str, str]:
    stand_in = python.parents[2] / "ComfyUI"
    env = dict(pip_env(), PYTHONPATH=str(stand_in), COMFYUI_PATH=str(stand_in))
    done = subprocess.run(
        [str(python), "-c", READ, str(user)],
        capture_output=True, text=True, env=env, timeout=120, check=False, cwd=stand_in,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_the_package_reads_the_level_start_sh_enforces(manager_venv, tmp_path, capsys):
    user = tmp_path / "volume" / "user"
    left = user / "__manager" / "config.ini"
    left.parent.mkdir(parents=True)
    left.write_text("[default]\nsecurity_level = weak\nshare_option = none\n")
    seen = read_with_the_package(manager_venv, user)
    assert Path(seen["path"]) == left  # where the package looks: user/__manager/config.ini
    assert seen["security_level"] == "weak"  # it reads this file (its default is normal)

    image = tmp_path / "manager-config.ini"  # what base-common ships (graph.render_base_common)
    image.write_text("[default]\nsecurity_level = strong\nnetwork_mode = public\n")
    argv = ["manager-config", "--source", str(image), "--user-dir", str(user), "--mode"]
    assert aiclipse_config.main([*argv, "package"]) == 0
    assert "__manager/config.ini security_level weak -> strong" in capsys.readouterr().out
    assert read_with_the_package(manager_venv, user)["security_level"] == "strong"
    assert "share_option = none" in left.read_text()  # the volume's other settings stay

    fresh = tmp_path / "fresh" / "user"  # a new volume: the image's config, as it is
    assert aiclipse_config.main(["manager-config", "--source", str(image), "--user-dir",
                                 str(fresh), "--mode", "package"]) == 0  # fmt: skip
    assert read_with_the_package(manager_venv, fresh)["security_level"] == "strong"
