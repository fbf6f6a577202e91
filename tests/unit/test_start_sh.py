"""start.sh lint and the config writers it calls (aiclipse_config.py), without docker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import aiclipse_config
import manifests
import pytest

START = Path(__file__).resolve().parents[2] / "runtime" / "start.sh"


def test_start_sh_parses_and_is_shellcheck_clean():
    subprocess.run(["bash", "-n", str(START)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    done = subprocess.run(["shellcheck", str(START)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


def test_model_paths_cover_every_folder_and_are_idempotent(tmp_path, capsys):
    config = tmp_path / "state" / "extra_model_paths.yaml"
    argv = ["model-paths", "--root", str(tmp_path), "--config", str(config)]
    assert aiclipse_config.main(argv) == 0
    text = config.read_text()
    for folder in manifests.MODEL_FOLDERS:
        assert f"    {folder}: models/{folder}\n" in text
        assert (tmp_path / "models" / folder).is_dir()
    assert "custom_nodes: custom_nodes" in text
    mtime = config.stat().st_mtime_ns
    assert aiclipse_config.main(argv) == 0
    assert config.stat().st_mtime_ns == mtime
    assert "unchanged" in capsys.readouterr().out.splitlines()[-1]


def test_jupyter_token_generated_once_then_kept(tmp_path, capsys):
    argv = ["jupyter", "--dir", str(tmp_path / "j"), "--root", "/w", "--ip", "127.0.0.1"]
    assert aiclipse_config.main(argv, env={}) == 0
    first = capsys.readouterr().out
    token = (tmp_path / "j" / "token").read_text().strip()
    assert len(token) >= 24 and f"shown once, kept in {tmp_path / 'j' / 'token'}): {token}" in first
    config = json.loads((tmp_path / "j" / "jupyter_server_config.json").read_text())
    assert config["IdentityProvider"]["token"] == token
    assert config["ServerApp"]["ip"] == "127.0.0.1"
    assert (tmp_path / "j" / "jupyter_server_config.json").stat().st_mode & 0o777 == 0o600
    assert aiclipse_config.main(argv, env={}) == 0
    second = capsys.readouterr().out
    assert token not in second and "config unchanged" in second
    assert aiclipse_config.main(argv, env={"JUPYTER_TOKEN": "given-token"}) == 0
    assert "given-token" not in capsys.readouterr().out
    config = json.loads((tmp_path / "j" / "jupyter_server_config.json").read_text())
    assert config["IdentityProvider"]["token"] == "given-token"


def test_filebrowser_password_needs_12_characters(capsys):
    assert aiclipse_config.main(["filebrowser-hash"], env={"FILEBROWSER_PASSWORD": "short"}) == 2
    assert aiclipse_config.main(["filebrowser-hash"], env={"FILEBROWSER_PASSWORD": "x" * 12}) == 0
    assert capsys.readouterr().out.startswith("$2")


def test_manager_config_goes_where_manager_reads_it_and_is_never_weakened(tmp_path, capsys):
    source = tmp_path / "manager-config.ini"
    source.write_text("[default]\nsecurity_level = normal\nnetwork_mode = public\n")
    user = tmp_path / "user"
    argv = ["manager-config", "--source", str(source), "--user-dir", str(user)]
    assert aiclipse_config.main(argv) == 0
    for rel in ("__manager/config.ini", "default/ComfyUI-Manager/config.ini"):
        assert (user / rel).read_text() == source.read_text()
    assert capsys.readouterr().out.count("written") == 2
    # a config from an older volume: other settings kept, a weak level raised to the image's
    old = user / "__manager" / "config.ini"
    old.write_text("[default]\nsecurity_level = weak\nshare_option = none\n")
    strong = user / "default" / "ComfyUI-Manager" / "config.ini"
    strong.write_text("[default]\nsecurity_level = strong\n")
    assert aiclipse_config.main(argv) == 0
    out = capsys.readouterr().out
    assert "__manager/config.ini security_level weak -> normal" in out
    assert "default/ComfyUI-Manager/config.ini kept (strong)" in out
    text = old.read_text()
    assert "security_level = normal" in text and "share_option = none" in text
    assert "security_level = strong" in strong.read_text()


def test_the_manager_package_reads_only_the_system_user_folder(tmp_path, capsys):
    source = tmp_path / "manager-config.ini"
    source.write_text("[default]\nsecurity_level = strong\n")
    user = tmp_path / "user"
    argv = ["manager-config", "--source", str(source), "--user-dir", str(user), "--mode"]
    assert aiclipse_config.main([*argv, "package"]) == 0
    assert (user / "__manager" / "config.ini").read_text() == source.read_text()
    # the package never reads user/default (which ComfyUI's userdata API serves): nothing there
    assert not (user / "default").exists()
    assert "__manager/config.ini written" in capsys.readouterr().out
    # read as Manager reads it: the last of two keys counts, and the case does not matter
    (user / "__manager" / "config.ini").write_text(
        "[default]\nsecurity_level = strong\nsecurity_level = WEAK\n"
    )
    assert aiclipse_config.main([*argv, "package"]) == 0
    assert "security_level weak -> strong" in capsys.readouterr().out
    (user / "__manager" / "config.ini").write_text("[default]\nsecurity_level = Strong\n")
    assert aiclipse_config.main([*argv, "package"]) == 0
    assert "kept (strong)" in capsys.readouterr().out


def run_start_sh(tmp_path: Path, **env: str) -> tuple[list[str], Path]:
    """start.sh up to ComfyUI's exec, every side service off; ComfyUI is a main.py that prints
    the arguments it was given."""
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "main.py").write_text("import json, sys\nprint('ARGV ' + json.dumps(sys.argv[1:]))\n")
    config = tmp_path / "manager-config.ini"
    config.write_text("[default]\nsecurity_level = normal\n")
    none = str(tmp_path / "absent")
    values = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AICLIPSE_ROOT": str(tmp_path / "volume"),
        "COMFY_DIR": str(comfy),
        "AICLIPSE_PYTHON": sys.executable,
        "RUNTIME_USER": "root",  # as root; a non-root run uses its own user
        "AICLIPSE_MANAGER_CONFIG": str(config),
        "WORKFLOWS_TEMPLATE_DIR": none,
        "MODELS_MANIFEST": none,
        "FILEBROWSER_BIN": none,
        "JUPYTER_ENABLE": "0",
        "COMFY_NO_AUTH": "1",  # no caddy here: the proxy is the docker tier's
        **env,
    }
    done = subprocess.run(
        ["bash", str(START)], env=values, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("ARGV "))
    return json.loads(line[5:]), tmp_path / "volume" / "user"


@pytest.mark.parametrize("mode", ["package", "git", ""])
def test_start_sh_starts_the_manager_package_with_enable_manager(tmp_path, mode):
    env = {"AICLIPSE_MANAGER_MODE": mode} if mode else {}
    argv, user = run_start_sh(tmp_path, COMFY_ARGS="--cpu", **env)
    assert argv[-1] == "--cpu"
    assert argv.count("--enable-manager") == (1 if mode == "package" else 0)
    assert "security_level = normal" in (user / "__manager" / "config.ini").read_text()
    legacy = user / "default" / "ComfyUI-Manager" / "config.ini"
    assert legacy.exists() == (mode != "package")  # a clone may read the old place


def test_start_sh_does_not_repeat_enable_manager_given_in_comfy_args(tmp_path):
    argv, _ = run_start_sh(
        tmp_path, AICLIPSE_MANAGER_MODE="package", COMFY_ARGS="--enable-manager --cpu"
    )
    assert argv.count("--enable-manager") == 1
