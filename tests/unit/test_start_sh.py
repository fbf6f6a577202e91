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


def start_sh(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """start.sh up to ComfyUI's exec, every side service off; ComfyUI is a main.py that prints
    the arguments it was given and its environment."""
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir(exist_ok=True)
    (comfy / "main.py").write_text(
        "import json, os, sys\nprint('ARGV ' + json.dumps(sys.argv[1:]))\n"
        "print('ENV ' + json.dumps(dict(os.environ)))\n"
    )
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
        "AICLIPSE_MODELS_USER": "nobody",  # the downloader's own user (not root's, not ours)
        "AICLIPSE_MANAGER_CONFIG": str(config),
        "WORKFLOWS_TEMPLATE_DIR": none,
        "MODELS_MANIFEST": none,
        "FILEBROWSER_BIN": none,
        "JUPYTER_ENABLE": "0",
        "COMFY_NO_AUTH": "1",  # no caddy here: the proxy is the docker tier's
        **env,
    }
    return subprocess.run(
        ["bash", str(START)], env=values, capture_output=True, text=True, timeout=60, check=False
    )


def run_start_sh(tmp_path: Path, **env: str) -> tuple[list[str], Path]:
    done = start_sh(tmp_path, **env)
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


# --------------------------------------------------------------------------------------------
# Issue 14: secrets, validation, Manager's parser, the proxy's config.

SECRET_ENV = {
    "HF_TOKEN": "canary-hf-0123456789",
    "CIVITAI_TOKEN": "canary-civitai-0123456789",
    "JUPYTER_PASSWORD": "canary-jupyter-password",
    "MY_API_KEY": "canary-api-key-0123456789",
}


def test_comfyui_gets_no_secret_but_those_named_in_aiclipse_pass_env(tmp_path):
    done = start_sh(tmp_path, **SECRET_ENV, AICLIPSE_PASS_ENV="MY_API_KEY")
    assert done.returncode == 0, done.stdout + done.stderr
    env = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("ENV "))[4:])
    for name in ("HF_TOKEN", "CIVITAI_TOKEN", "JUPYTER_PASSWORD"):
        assert name not in env and SECRET_ENV[name] not in json.dumps(env)
    assert env["MY_API_KEY"] == SECRET_ENV["MY_API_KEY"]  # named: passed
    assert "AICLIPSE_SCRUBBED" not in env
    assert "secrets passed: MY_API_KEY" in done.stdout
    logs = [x for x in done.stdout.splitlines() if not x.startswith("ENV ")]
    for value in SECRET_ENV.values():
        assert value not in "\n".join(logs) + done.stderr


def test_the_internal_scrub_marker_cannot_smuggle_a_secret(tmp_path):
    done = start_sh(tmp_path, AICLIPSE_SCRUBBED="1", HF_TOKEN="canary-hf-0123456789")
    assert done.returncode == 1
    assert "HF_TOKEN survived the scrub" in done.stderr


def test_a_newline_in_ssh_port_stops_the_start(tmp_path):
    done = start_sh(tmp_path, SSH_PORT="2222\nPasswordAuthentication yes")
    assert done.returncode == 1
    assert "invalid variable: SSH_PORT=" in done.stderr and "must be a port number" in done.stderr
    assert "ARGV" not in done.stdout


def test_a_bad_aiclipse_root_stops_the_start_before_any_folder_is_made(tmp_path):
    root = tmp_path / "vol\nPasswordAuthentication yes"
    done = start_sh(tmp_path, AICLIPSE_ROOT=str(root), SSH_PORT="2222")
    assert done.returncode == 1
    assert "invalid variable: AICLIPSE_ROOT=" in done.stderr
    assert "must be an absolute path of letters, digits and . _ - / only" in done.stderr
    assert not root.exists() and "ARGV" not in done.stdout


def test_the_state_is_kept_beside_the_data_folder_and_an_old_one_moves_out(tmp_path):
    old = tmp_path / "volume" / ".aiclipse"
    old.mkdir(parents=True)
    (old / "kept").write_text("host keys\n")
    done = start_sh(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not old.exists() and (tmp_path / ".aiclipse" / "kept").read_text() == "host keys\n"
    assert f"state: moved {old}" in done.stdout
    assert f"--extra-model-paths-config {tmp_path / '.aiclipse' / 'extra_model_paths.yaml'}" in (
        " ".join(json.loads(next(x for x in done.stdout.splitlines() if x.startswith("ARGV "))[5:]))
    )


def test_a_failing_model_paths_step_stops_the_start(tmp_path):
    (tmp_path / ".aiclipse" / "extra_model_paths.yaml").mkdir(parents=True)  # beside the volume
    done = start_sh(tmp_path)
    assert done.returncode == 1
    assert "model paths: cannot write" in done.stderr and "ARGV" not in done.stdout


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@x"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SSH_PORT": "22\nPort 23"}, "SSH_PORT='22\\nPort 23': must be a port number"),
        ({"SSH_PORT": "0"}, "SSH_PORT='0': must be a port number, 1 to 65535"),
        ({"JUPYTER_PORT": "-1"}, "JUPYTER_PORT"),
        ({"COMFY_INTERNAL_PORT": "8188"}, "COMFY_INTERNAL_PORT=8188: must differ"),
        ({"RUNTIME_USER": "Root"}, "RUNTIME_USER='Root': must be a user name"),
        ({"COMFY_USER": "a:b"}, "COMFY_USER"),
        ({"FILEBROWSER_USER": "x y"}, "FILEBROWSER_USER"),
        ({"AICLIPSE_LISTEN": "localhost"}, "AICLIPSE_LISTEN='localhost': must be an IPv4"),
        ({"COMFY_LISTEN": "1.2.3.4\n"}, "COMFY_LISTEN"),
        ({"PUBLIC_KEY": f"no-pty {KEY}"}, "PUBLIC_KEY line 1: must be a plain public key"),
        ({"PUBLIC_KEY": f'from="10.0.0.1" {KEY}'}, "no options"),
        ({"SSH_PUBLIC_KEY": KEY.replace("ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com")},
         "SSH_PUBLIC_KEY line 1"),
        ({"PUBLIC_KEY": "ssh-rsa " + KEY.split()[1]},
         "not a ssh-rsa key"),
        ({"PUBLIC_KEY": "ssh-ed25519 AAAA!!!"}, "PUBLIC_KEY line 1"),
        ({"JUPYTER_TOKEN": "x" * 15}, "JUPYTER_TOKEN: must be at least 16 characters (it has 15)"),
        ({"JUPYTER_PASSWORD": "x" * 11}, "JUPYTER_PASSWORD: must be at least 12"),
        ({"COMFY_TOKEN": "x" * 15}, "COMFY_TOKEN: must be at least 16"),
        ({"FILEBROWSER_PASSWORD": "x" * 11}, "FILEBROWSER_PASSWORD: must be at least 12"),
        ({"COMFY_TOKEN": "x" * 16 + "\n"}, "COMFY_TOKEN: must not hold control characters"),
        ({"NODES_INSTALL": "True"}, "NODES_INSTALL='True': must be one of"),
        ({"MODELS_JOBS": "0"}, "MODELS_JOBS='0': must be a number, 1 to 16"),
        ({"RUNPOD_POD_ID": "abc.evil.example/x"}, "RUNPOD_POD_ID"),
        ({"AICLIPSE_ALLOWED_ORIGINS": "https://a.example *"}, "'*' is never allowed"),
        ({"AICLIPSE_ALLOWED_ORIGINS": "https://a.example/path"}, "without a path"),
        ({"AICLIPSE_ALLOWED_ORIGINS": "javascript://x"}, "must be an origin"),
        ({"COMFY_ARGS": "--port=9000"}, "COMFY_ARGS: must not set --port"),
        ({"COMFY_ARGS": "--enable-cors-header *"}, "must not set --enable-cors-header"),
        # argparse takes unambiguous prefixes: --liste is --listen (all interfaces, no proxy)
        ({"COMFY_ARGS": "--cpu --liste"}, "COMFY_ARGS: must not set --listen"),
        ({"COMFY_ARGS": "--por 9000"}, "COMFY_ARGS: must not set --port"),
        ({"COMFY_ARGS": "--enable-cors"}, "must not set --enable-cors-header"),
        # start.sh splits on spaces; quotes would let the check and ComfyUI see other words
        ({"COMFY_ARGS": "--temp-directory '/x --listen --temp-directory /y'"},
         "COMFY_ARGS: must not hold quotes"),
        # Python's ip_address takes anything after an IPv6 '%', newlines too (sshd, Caddy)
        ({"COMFY_LISTEN": "fe80::1%eth0\nPasswordAuthentication yes"}, "COMFY_LISTEN"),
        ({"COMFY_LISTEN": "::1%x]"}, "no %scope"),
        ({"COMFY_CORS_ORIGIN": "*"}, "COMFY_CORS_ORIGIN: no longer read"),
        ({"JUPYTER_ALLOW_ORIGIN": "*"}, "JUPYTER_ALLOW_ORIGIN: no longer read"),
        ({"AICLIPSE_PASS_ENV": "A;B"}, "AICLIPSE_PASS_ENV"),
        # AICLIPSE_ROOT reaches sshd's HostKey lines (the state is beside it): a newline there
        # was a line of sshd's config
        ({"AICLIPSE_ROOT": "/workspace/x\nPasswordAuthentication yes"},
         "AICLIPSE_ROOT='/workspace/x\\nPasswordAuthentication yes': must be an absolute path"),
        ({"AICLIPSE_ROOT": "workspace/aiclipse"}, "AICLIPSE_ROOT='workspace/aiclipse': must be an"),
        ({"AICLIPSE_ROOT": "/"}, "not / itself"),
        ({"AICLIPSE_ROOT": "/workspace/a b"}, "(no spaces, no newline)"),
        ({"AICLIPSE_ROOT": "/workspace/../etc"}, "without . or .. parts"),
        ({"AICLIPSE_ROOT": "/workspace/$(id)"}, "letters, digits and . _ - / only"),
        ({"AICLIPSE_STATE": "/workspace/aiclipse/.aiclipse"}, "must be outside AICLIPSE_ROOT"),
        ({"AICLIPSE_ROOT": "/w/a", "AICLIPSE_STATE": "/w"}, "hold no part of it"),
        ({"AICLIPSE_MODELS_USER": "x\ny"}, "AICLIPSE_MODELS_USER"),
    ],
)  # fmt: skip
def test_validate_names_the_variable_and_the_rule(env, message, capsys):
    assert aiclipse_config.main(["validate"], env=env) == 2
    err = capsys.readouterr().err
    assert message in err
    for name in ("JUPYTER_TOKEN", "COMFY_TOKEN", "JUPYTER_PASSWORD", "FILEBROWSER_PASSWORD"):
        if name in env:
            assert env[name] not in err  # the rule, never the secret


def test_validate_accepts_good_values(capsys):
    env = {
        "SSH_PORT": "2222",
        "COMFY_PORT": "3000",
        "RUNTIME_USER": "comfy",
        "AICLIPSE_LISTEN": "::",
        "COMFY_LISTEN": "127.0.0.1",
        "PUBLIC_KEY": f"# mine\n{KEY}\r\n\n{KEY.replace('me@x', 'other key')}",
        "JUPYTER_TOKEN": "x" * 16,
        "COMFY_TOKEN": "y" * 40,
        "NODES_INSTALL": "yes",
        "RUNPOD_POD_ID": "abc123",
        "AICLIPSE_ALLOWED_ORIGINS": "https://a.example, http://127.0.0.1:8188",
        "COMFY_ARGS": "--cpu --preview-method auto",
        "AICLIPSE_PASS_ENV": "OPENAI_API_KEY,MY_KEY",
        "MODELS_JOBS": "3",
        "AICLIPSE_ROOT": "/data/my_models-1.0/aiclipse",
        "AICLIPSE_MODELS_USER": "aiclipse-models",
    }
    assert aiclipse_config.main(["validate"], env=env) == 0, capsys.readouterr().err
    assert (
        aiclipse_config.main(["validate"], env={"COMFY_NO_AUTH": "1", "COMFY_ARGS": "--port 1"})
        == 0
    )


# What ComfyUI-Manager reads is what aiclipse_config.manager_view says: checked against its
# own reader in test_manager_package.py; here every trick a hostile config can play.
MANAGER_TRICKS = {
    "duplicate key, last wins": "[default]\nsecurity_level = strong\nsecurity_level = weak\n",
    "second [default]": "[default]\nsecurity_level = strong\n[default]\nsecurity_level = weak\n",
    "key case": "[default]\nsecurity_level = strong\nSECURITY_LEVEL = weak\n",
    "value case": "[default]\nsecurity_level = WeAk\n",
    "[DEFAULT] fills in": "[DEFAULT]\nsecurity_level = weak\n[default]\nx = 1\n",
    "only [DEFAULT]": "[DEFAULT]\nsecurity_level = weak\n",
    "interpolation": "[default]\nlow = weak\nsecurity_level = %(low)s\n",
    "colon separator": "[default]\nsecurity_level: weak\n",
    "other section ignored": "[Default]\nsecurity_level = strong\n"
    "[default]\nsecurity_level = weak\n",
    "normal-minus": "[default]\nsecurity_level = normal-minus\n",
    "unknown level": "[default]\nsecurity_level = none\n",
    "no level at all": "[default]\nshare_option = none\n",
    "no [default]": "[other]\nsecurity_level = strong\n",
    "continuation line": "[default]\nsecurity_level = strong\n  weak\n",
    "inline comment": "[default]\nsecurity_level = strong ; weak\n",
    "switch on": "[default]\nsecurity_level = strong\nallow_pip_install = TRUE\n",
    "switch, second section": "[default]\nsecurity_level = strong\n"
    "[default]\nAllow_Git_Url_Install = true\n",
    "not ini at all": "security_level = weak\n",
    "bad interpolation": "[default]\nsecurity_level = %(missing)s\n",
    "empty": "",
}


@pytest.mark.parametrize("trick", sorted(MANAGER_TRICKS))
def test_every_manager_config_trick_ends_at_the_image_level(tmp_path, trick, capsys):
    source = tmp_path / "manager-config.ini"
    source.write_text("[default]\nsecurity_level = normal\n")
    user = tmp_path / "user"
    path = user / "__manager" / "config.ini"
    path.parent.mkdir(parents=True)
    path.write_text(MANAGER_TRICKS[trick])
    argv = ["manager-config", "--source", str(source), "--user-dir", str(user), "--mode", "package"]
    assert aiclipse_config.main(argv) == 0
    assert " -> " in capsys.readouterr().out  # rewritten, and said so
    view = aiclipse_config.manager_view(path.read_text())
    assert view["security_level"] == "normal", (trick, path.read_text())
    for key in aiclipse_config.MANAGER_SWITCHES:
        assert view.get(key, "false").lower() != "true", (trick, path.read_text())
    mtime = path.stat().st_mtime_ns  # and the next start leaves it alone
    assert aiclipse_config.main(argv) == 0
    assert path.stat().st_mtime_ns == mtime and "kept (normal)" in capsys.readouterr().out


def test_a_stronger_level_and_other_settings_are_kept(tmp_path, capsys):
    source = tmp_path / "manager-config.ini"
    source.write_text("[default]\nsecurity_level = normal\n")
    user = tmp_path / "user"
    path = user / "__manager" / "config.ini"
    path.parent.mkdir(parents=True)
    path.write_text("[default]\nsecurity_level = weak\nshare_option = none\npct = 50%%\n")
    argv = ["manager-config", "--source", str(source), "--user-dir", str(user), "--mode", "package"]
    assert aiclipse_config.main(argv) == 0
    view = aiclipse_config.manager_view(path.read_text())
    assert view == {"security_level": "normal", "share_option": "none", "pct": "50%"}
    path.write_text("[default]\nsecurity_level = strong\n")
    assert aiclipse_config.main(argv) == 0
    assert "kept (strong)" in capsys.readouterr().out


def test_a_manager_config_that_is_not_a_file_stops_the_step(tmp_path, capsys):
    source = tmp_path / "manager-config.ini"
    source.write_text("[default]\nsecurity_level = normal\n")
    (tmp_path / "user" / "__manager" / "config.ini").mkdir(parents=True)
    argv = ["manager-config", "--source", str(source), "--user-dir", str(tmp_path / "user")]
    assert aiclipse_config.main(argv) == 1
    assert "is not a plain file" in capsys.readouterr().err


def test_the_proxy_config_is_stable_and_never_allows_every_origin(tmp_path, capsys):
    argv = ["proxy", "--dir", str(tmp_path / "p"), "--listen", "0.0.0.0", "--port", "8188",
            "--upstream-port", "18188", "--user", "comfy",
            "--origin", "https://pod1-8188.proxy.runpod.net"]  # fmt: skip
    assert aiclipse_config.main(argv, env={}) == 0
    out = capsys.readouterr().out
    token = (tmp_path / "p" / "token").read_text().strip()
    assert len(token) >= 24 and f"(shown once, kept in {tmp_path / 'p' / 'token'}): {token}" in out
    caddyfile = tmp_path / "p" / "Caddyfile"
    text = caddyfile.read_text()
    assert "admin off" in text and "bind 0.0.0.0" in text
    assert "reverse_proxy 127.0.0.1:18188" in text
    assert r"https://pod1\-8188\.proxy\.runpod\.net" in text
    assert 'Access-Control-Allow-Origin "*"' not in text and token not in text
    # fetch metadata: cross-site and same-site requests need an allowed Origin too (a
    # top-level GET navigation excepted), before authentication
    crosssite = text[text.index("@crosssite {") : text.index("respond @crosssite")]
    assert "Sec-Fetch-Site" in crosssite and "cross-site|same-site" in crosssite
    assert r'not header_regexp Origin "^(https://pod1\-8188' in crosssite
    assert text.index("respond @crosssite") < text.index("basicauth")
    assert caddyfile.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "p" / "token").stat().st_mode & 0o777 == 0o600
    mtime = caddyfile.stat().st_mtime_ns
    assert aiclipse_config.main(argv, env={}) == 0
    again = capsys.readouterr().out
    assert token not in again and "unchanged" in again and caddyfile.stat().st_mtime_ns == mtime
    assert aiclipse_config.main(argv, env={"COMFY_TOKEN": "z" * 20}) == 0
    assert "token from COMFY_TOKEN" in capsys.readouterr().out
    assert caddyfile.read_text() != text  # a new token: a new hash


def test_jupyter_gets_concrete_origins_and_lax_cookies(tmp_path):
    argv = ["jupyter", "--dir", str(tmp_path / "j"), "--root", "/w"]
    assert aiclipse_config.main([*argv, "--origin", "https://p-8888.proxy.runpod.net"], env={}) == 0
    config = json.loads((tmp_path / "j" / "jupyter_server_config.json").read_text())
    server = config["ServerApp"]
    assert "allow_origin" not in server
    assert server["allow_origin_pat"] == r"^(https://p\-8888\.proxy\.runpod\.net)$"
    assert config["IdentityProvider"]["cookie_options"] == {"samesite": "Lax", "secure": True}
    assert server["tornado_settings"]["xsrf_cookie_kwargs"]["samesite"] == "Lax"
    assert aiclipse_config.main(argv, env={}) == 0  # no origin: same-origin only, not Secure
    config = json.loads((tmp_path / "j" / "jupyter_server_config.json").read_text())
    assert "allow_origin_pat" not in config["ServerApp"]
    assert "allow_origin" not in config["ServerApp"]
    assert config["IdentityProvider"]["cookie_options"]["secure"] is False
