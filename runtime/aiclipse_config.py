#!/usr/bin/env python3
"""Small config writers for start.sh (standard library only), each idempotent.

A file is rewritten only when its content would change, so a restart on the same volume
leaves every config file as it was. Secrets come from the environment (never argv) and are
never printed, except a token this script generates: it is printed once, when generated.

Commands (each prints one line for start.sh's log):

* ``model-paths --root R --config F``: ComfyUI's ``extra_model_paths.yaml`` pointing every
  model folder of the shared manifest parser (plus ``custom_nodes``) into ``R``; creates the
  folders under ``R/models``.
* ``jupyter --dir D --root R --ip A --port P``: ``D/jupyter_server_config.json`` with the token from
  JUPYTER_TOKEN, or a password hash from JUPYTER_PASSWORD (kept while it still matches), else
  a generated token saved in ``D/token`` (0600) and printed once.
* ``filebrowser-hash``: a bcrypt hash of FILEBROWSER_PASSWORD (the environment) on stdout.
* ``token``: a new random token on stdout.
"""

from __future__ import annotations

import argparse
import configparser
import io
import json
import os
import secrets
import sys
import tempfile
import warnings
from pathlib import Path

try:
    import manifests
except ImportError:  # run from the repository: the parser lives in module_utils/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))
    import manifests

EXIT_OK, EXIT_USAGE = 0, 2
MIN_FILEBROWSER_PASSWORD = 12


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Atomically replace ``path`` with ``text`` when it differs; True when written."""
    try:
        if path.read_text(encoding="utf-8") == text:
            if (path.stat().st_mode & 0o777) != mode:
                os.chmod(path, mode)
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def model_paths_yaml(root: Path) -> str:
    lines = [
        "# Written by start.sh at every start (only when it would change); do not edit.",
        "# Add your own paths in a file named extra_model_paths.user.yaml beside the models",
        "# folder: start.sh passes it to ComfyUI too.",
        "aiclipse:",
        f"    base_path: {json.dumps(str(root))}",
        "    is_default: true",
    ]
    lines += [f"    {folder}: models/{folder}" for folder in manifests.MODEL_FOLDERS]
    lines.append("    custom_nodes: custom_nodes")
    return "\n".join(lines) + "\n"


def cmd_model_paths(args: argparse.Namespace) -> int:
    root = Path(args.root)
    for folder in manifests.MODEL_FOLDERS:
        (root / "models" / folder).mkdir(parents=True, exist_ok=True)
    changed = write_if_changed(Path(args.config), model_paths_yaml(root))
    state = "written" if changed else "unchanged"
    print(f"{args.config} {state} ({len(manifests.MODEL_FOLDERS)} model folders)")
    return EXIT_OK


def _hash_password(password: str, current: str | None) -> str:
    from jupyter_server.auth import passwd, passwd_check

    if current and passwd_check(current, password):
        return current
    return passwd(password)


def cmd_jupyter(args: argparse.Namespace, env: dict[str, str]) -> int:
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    config_path = folder / "jupyter_server_config.json"
    token_path = folder / "token"
    try:
        current = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = {}
    server = {
        "ip": args.ip,
        "port": args.port,
        "open_browser": False,
        "root_dir": str(args.root),
        "allow_remote_access": True,
        "allow_origin": env.get("JUPYTER_ALLOW_ORIGIN", "*"),
    }
    config: dict[str, dict] = {"ServerApp": server}
    token = env.get("JUPYTER_TOKEN", "")
    password = env.get("JUPYTER_PASSWORD", "")
    generated = False
    if token:
        how = "token from JUPYTER_TOKEN"
    elif password:
        how = "password from JUPYTER_PASSWORD"
    else:
        try:
            token = token_path.read_text(encoding="utf-8").strip()
            how = f"token generated at first start (in {token_path})"
        except FileNotFoundError:
            token = ""
        if not token:
            token = secrets.token_urlsafe(24)
            write_if_changed(token_path, token + "\n", 0o600)
            generated = True
            how = f"generated token (shown once, kept in {token_path}): {token}"
    config["IdentityProvider"] = {"token": token}
    if password:
        old = current.get("PasswordIdentityProvider", {}).get("hashed_password")
        config["PasswordIdentityProvider"] = {"hashed_password": _hash_password(password, old)}
    if not token and not password:
        raise AssertionError("unreachable: Jupyter never starts without a token or password")
    changed = write_if_changed(
        config_path, json.dumps(config, indent=1, sort_keys=True) + "\n", 0o600
    )
    state = "written" if changed else "unchanged"
    print(f"{how}; config {state}" if not generated else how)
    return EXIT_OK


def cmd_filebrowser_hash(env: dict[str, str]) -> int:
    password = env.get("FILEBROWSER_PASSWORD", "")
    if len(password) < MIN_FILEBROWSER_PASSWORD:
        print(
            f"FILEBROWSER_PASSWORD must be at least {MIN_FILEBROWSER_PASSWORD} characters",
            file=sys.stderr,
        )
        return EXIT_USAGE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt through glibc's libxcrypt; FileBrowser stores bcrypt hashes

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not hashed or not hashed.startswith("$2"):
        print("this system's crypt() has no bcrypt", file=sys.stderr)
        return EXIT_USAGE
    print(hashed)
    return EXIT_OK


# ComfyUI-Manager's security levels, weakest first.
MANAGER_LEVELS = ("weak", "normal-", "normal", "strong")
# Where Manager reads its config.ini under ComfyUI's user directory, by how it is installed.
# The comfyui-manager package (4.x, ComfyUI >= 0.4 with --enable-manager) reads only
# folder_paths.get_system_user_directory("manager"), i.e. <user>/__manager/config.ini. A git
# clone reads that folder from 3.38 on where ComfyUI has the system-user API (the folder the
# userdata API cannot write), else <user>/default/ComfyUI-Manager (3.x before, old ComfyUI).
MANAGER_CONFIGS = {
    "package": ("__manager/config.ini",),
    "git": ("__manager/config.ini", "default/ComfyUI-Manager/config.ini"),
}


def cmd_manager_config(args: argparse.Namespace) -> int:
    """Give Manager the image's config where it reads it; an existing config keeps its other
    settings, but its security level is never below the image's (a volume from an older
    image or a hand edit cannot weaken it)."""
    image = configparser.ConfigParser()
    image.read_string(Path(args.source).read_text())
    floor = image.get("default", "security_level", fallback="normal")
    notes = []
    for rel in MANAGER_CONFIGS[args.mode]:
        path = Path(args.user_dir) / rel
        if not path.exists():
            write_if_changed(path, Path(args.source).read_text())
            notes.append(f"{rel} written")
            continue
        # read as Manager reads it: duplicate keys allowed (the last wins), level lower-cased
        current = configparser.ConfigParser(strict=False)
        current.read_string(path.read_text())
        if not current.has_section("default"):
            current.add_section("default")
        level = current.get("default", "security_level", fallback="").lower()
        rank = MANAGER_LEVELS.index(level) if level in MANAGER_LEVELS else -1
        if rank < MANAGER_LEVELS.index(floor):
            current.set("default", "security_level", floor)
            out = io.StringIO()
            current.write(out)
            write_if_changed(path, out.getvalue())
            notes.append(f"{rel} security_level {level or 'unset'} -> {floor}")
        else:
            notes.append(f"{rel} kept ({level})")
    print(f"manager config: {'; '.join(notes)}")
    return EXIT_OK


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    paths = sub.add_parser("model-paths")
    paths.add_argument("--root", required=True)
    paths.add_argument("--config", required=True)
    jupyter = sub.add_parser("jupyter")
    jupyter.add_argument("--dir", required=True)
    jupyter.add_argument("--root", required=True)
    jupyter.add_argument("--port", type=int, default=8888)
    jupyter.add_argument("--ip", default="0.0.0.0")
    sub.add_parser("filebrowser-hash")
    sub.add_parser("token")
    manager = sub.add_parser("manager-config")
    manager.add_argument("--source", required=True)
    manager.add_argument("--user-dir", required=True)
    manager.add_argument(
        "--mode", choices=sorted(MANAGER_CONFIGS), default="git", help="how Manager is installed"
    )
    args = parser.parse_args(argv)
    if args.command == "model-paths":
        return cmd_model_paths(args)
    if args.command == "jupyter":
        return cmd_jupyter(args, env)
    if args.command == "filebrowser-hash":
        return cmd_filebrowser_hash(env)
    if args.command == "manager-config":
        return cmd_manager_config(args)
    print(secrets.token_urlsafe(18))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
