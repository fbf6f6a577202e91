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
  Cross-origin requests and WebSockets only from ``--origin`` (the pod's RunPod proxy origin
  and AICLIPSE_ALLOWED_ORIGINS); the login and XSRF cookies SameSite=Lax, Secure when an
  origin is https.
* ``proxy --dir D --listen A --port P --upstream-port U --user N [--origin O]...``: the Caddyfile
  of the authenticating proxy in front of ComfyUI (basic auth, user N, the token from
  COMFY_TOKEN, else one generated, saved in ``D/token`` (0600) and printed once); requests with
  an ``Origin`` that is neither the proxy's own nor an ``--origin`` get 403, WebSockets too.
* ``validate``: every variable start.sh reads (the environment) against its rule; each bad
  one is named with the rule on stderr, exit 2.
* ``filebrowser-hash``: a bcrypt hash of FILEBROWSER_PASSWORD (the environment) on stdout.
* ``token``: a new random token on stdout.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import configparser
import ipaddress
import json
import os
import re
import secrets
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

try:
    import manifests
except ImportError:  # run from the repository: the parser lives in module_utils/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))
    import manifests

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
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


def stored_token(path: Path) -> tuple[str, bool]:
    """The token kept at ``path`` (0600), or a new one written there; and whether it is new
    (then the caller prints it, once)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token, False
    token = secrets.token_urlsafe(24)
    write_if_changed(path, token + "\n", 0o600)
    return token, True


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
    }
    # Cross-origin requests and WebSockets only from the listed origins (Jupyter always lets
    # a page of its own origin in); never '*'. Cookies SameSite=Lax, Secure behind https.
    if args.origin:
        server["allow_origin_pat"] = origin_regexp(args.origin)
    secure = any(origin.startswith("https://") for origin in args.origin)
    cookies = {"samesite": "Lax", "secure": secure}
    server["tornado_settings"] = {"xsrf_cookie_kwargs": {**cookies, "path": "/"}}
    config: dict[str, dict] = {"ServerApp": server}
    token = env.get("JUPYTER_TOKEN", "")
    password = env.get("JUPYTER_PASSWORD", "")
    generated = False
    if token:
        how = "token from JUPYTER_TOKEN"
    elif password:
        how = "password from JUPYTER_PASSWORD"
    else:
        token, generated = stored_token(token_path)
        how = (
            f"generated token (shown once, kept in {token_path}): {token}"
            if generated
            else f"token generated at first start (in {token_path})"
        )
    config["IdentityProvider"] = {"token": token, "cookie_options": cookies}
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


# --------------------------------------------------------------------------------------------
# The environment start.sh reads: every variable is checked before anything uses it.

PORTS = {
    "COMFY_PORT": 8188,
    "COMFY_INTERNAL_PORT": 18188,
    "SSH_PORT": 22,
    "JUPYTER_PORT": 8888,
    "FILEBROWSER_PORT": 8080,
}
NAMES = (
    "RUNTIME_USER",
    "FILEBROWSER_USER",
    "COMFY_USER",
    "AICLIPSE_MODELS_USER",
    "AICLIPSE_PROXY_USER",
)
# Folders that reach sshd's HostKey lines, ComfyUI's argv and FileBrowser's root.
PATHS = ("AICLIPSE_ROOT", "AICLIPSE_STATE")
DEFAULT_ROOT = "/workspace/aiclipse"
LISTENS = ("AICLIPSE_LISTEN", "COMFY_LISTEN")
SWITCHES = (
    "JUPYTER_ENABLE",
    "FILEBROWSER_ENABLE",
    "MODELS_DOWNLOAD",
    "MODELS_ASYNC",
    "MODELS_REQUIRED",
    "NODES_INSTALL",
    "NODES_REQUIRED",
    "COMFY_NO_AUTH",
)
# Every password or token the user sets, and its minimum length.
MIN_LENGTHS = {
    "COMFY_TOKEN": 16,
    "JUPYTER_TOKEN": 16,
    "JUPYTER_PASSWORD": 12,
    "FILEBROWSER_PASSWORD": MIN_FILEBROWSER_PASSWORD,
}
KEY_VARS = ("PUBLIC_KEY", "SSH_PUBLIC_KEY")
# Variables this runtime no longer reads: refused rather than silently ignored.
RETIRED = {
    "COMFY_CORS": "ComfyUI's CORS is the proxy's now: set AICLIPSE_ALLOWED_ORIGINS",
    "COMFY_CORS_ORIGIN": "ComfyUI's CORS is the proxy's now: set AICLIPSE_ALLOWED_ORIGINS",
    "JUPYTER_ALLOW_ORIGIN": "set AICLIPSE_ALLOWED_ORIGINS (Jupyter and ComfyUI)",
}
NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
SWITCH_RE = re.compile(r"0|1|true|false|yes|no|on|off")
PORT_RE = re.compile(r"[0-9]{1,5}")
POD_ID_RE = re.compile(r"[a-z0-9]{1,64}")
PATH_RE = re.compile(r"(/[A-Za-z0-9._-]+)+")
ORIGIN_RE = re.compile(
    r"https?://[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?"
)
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
KEY_LINE_RE = re.compile(
    r"(?P<type>[a-z0-9@.-]+) (?P<blob>[A-Za-z0-9+/]+={0,3})(?: [^\x00-\x1f\x7f]*)?"
)
# ComfyUI arguments start.sh sets itself: given in COMFY_ARGS they would bypass the proxy.
COMFY_ARGS_OWN = ("--listen", "--port", "--enable-cors-header")


class EnvError(ValueError):
    """A variable breaks its rule; the message names both."""


def port(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    if value == "":
        return PORTS[name]
    if not PORT_RE.fullmatch(value) or not 1 <= int(value) <= 65535:
        raise EnvError(f"{name}={value!r}: must be a port number, 1 to 65535")
    return int(value)


def public_keys(name: str, text: str) -> list[str]:
    """The key lines of ``text``; a line with options, a certificate or anything but
    ``<type> <base64 key> [comment]`` is an error (blank lines and ``#`` comments are not)."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.removesuffix("\r")
        if not line.strip() or line.startswith("#"):
            continue
        match = KEY_LINE_RE.fullmatch(line)
        rule = f"{name} line {number}: must be a plain public key line, '<type> <key> [comment]'"
        if not match or match["type"] not in KEY_TYPES:
            raise EnvError(
                f"{rule} with a type of {', '.join(KEY_TYPES)}; no options (command=, "
                "cert-authority, from=...) and no certificates"
            )
        try:
            blob = base64.b64decode(match["blob"], validate=True)
        except binascii.Error as err:
            raise EnvError(f"{rule}: the key is not base64 ({err})") from None
        size = int.from_bytes(blob[:4], "big")
        if blob[4 : 4 + size].decode("ascii", "replace") != match["type"]:
            raise EnvError(f"{rule}: the key's data is not a {match['type']} key")
        keys.append(line)
    return keys


def origins(env: Mapping[str, str], service_port: int) -> list[str]:
    """The origins a browser may call a service from: the pod's RunPod proxy origin for the
    service's port (RUNPOD_POD_ID) and AICLIPSE_ALLOWED_ORIGINS (space or comma separated)."""
    found = []
    pod = env.get("RUNPOD_POD_ID", "")
    if pod:
        found.append(f"https://{pod}-{service_port}.proxy.runpod.net")
    for origin in re.split(r"[\s,]+", env.get("AICLIPSE_ALLOWED_ORIGINS", "").strip()):
        if origin and origin not in found:
            found.append(origin)
    return found


def _check_port(env, name):
    port(env, name)


def _check_name(env, name):
    value = env[name]
    if not NAME_RE.fullmatch(value):
        raise EnvError(
            f"{name}={value!r}: must be a user name: a lower-case letter or _, then up to 31 of "
            "a-z, 0-9, _, -"
        )


def state_folder(env: Mapping[str, str]) -> str:
    """Where start.sh keeps its state: AICLIPSE_STATE, else ``.aiclipse`` beside the data
    folder (outside it: FileBrowser serves the data folder)."""
    root = env.get("AICLIPSE_ROOT") or DEFAULT_ROOT
    return env.get("AICLIPSE_STATE") or os.path.join(os.path.dirname(root), ".aiclipse")


def _check_path(env, name):
    value = env[name]
    rule = (
        f"{name}={value!r}: must be an absolute path of letters, digits and . _ - / only "
        "(no spaces, no newline), not / itself, without . or .. parts"
    )
    parts = value.split("/")
    if not PATH_RE.fullmatch(value) or any(part in (".", "..") for part in parts):
        raise EnvError(rule)
    if name == "AICLIPSE_STATE" or "AICLIPSE_STATE" not in env:
        root = (env.get("AICLIPSE_ROOT") or DEFAULT_ROOT).rstrip("/")
        state = state_folder(env).rstrip("/")
        if state == root or state.startswith(root + "/") or root.startswith(state + "/"):
            raise EnvError(
                f"{name}={value!r}: the state folder ({state}) must be outside AICLIPSE_ROOT "
                f"({root}) and hold no part of it: FileBrowser serves AICLIPSE_ROOT, and the "
                "state holds the credentials"
            )


def _check_listen(env, name):
    value = env[name]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise EnvError(f"{name}={value!r}: must be an IPv4 or IPv6 address") from None
    # Python accepts anything after an IPv6 '%' (a scope id), newlines included: those would
    # reach sshd's and Caddy's config. Plain hex digits, dots and colons only.
    if not re.fullmatch(r"[0-9A-Fa-f:.]+", value) or getattr(address, "scope_id", None):
        raise EnvError(
            f"{name}={value!r}: must be a plain IPv4 or IPv6 address (digits, dots, colons; "
            "no %scope)"
        )


def _check_switch(env, name):
    value = env[name]
    if not SWITCH_RE.fullmatch(value):
        raise EnvError(f"{name}={value!r}: must be one of 1, 0, true, false, yes, no, on, off")


def _check_secret(env, name):
    value, least = env[name], MIN_LENGTHS[name]
    if len(value) < least:
        raise EnvError(f"{name}: must be at least {least} characters (it has {len(value)})")
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise EnvError(f"{name}: must not hold control characters (newline, tab, ...)")


def _check_keys(env, name):
    public_keys(name, env[name])


def _check_retired(env, name):
    raise EnvError(f"{name}: no longer read; {RETIRED[name]}")


def _check_pod(env, name):
    value = env[name]
    if not POD_ID_RE.fullmatch(value):
        raise EnvError(f"{name}={value!r}: must be a RunPod pod id (a-z, 0-9)")


def _check_origins(env, name):
    for origin in re.split(r"[\s,]+", env[name].strip()):
        if origin == "*":
            raise EnvError(f"{name}: '*' is never allowed; list each origin")
        if origin and not ORIGIN_RE.fullmatch(origin):
            raise EnvError(
                f"{name}: {origin!r} must be an origin, http(s)://<lower-case host>[:port], "
                "without a path"
            )


def _check_jobs(env, name):
    value = env[name]
    if not re.fullmatch(r"[0-9]{1,2}", value) or not 1 <= int(value) <= 16:
        raise EnvError(f"{name}={value!r}: must be a number, 1 to 16")


def _check_pass_env(env, name):
    for item in re.split(r"[\s,]+", env[name].strip()):
        if item and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", item):
            raise EnvError(f"{name}: {item!r} must be a variable name")


def _check_comfy_args(env, name):
    value = env[name]
    # start.sh splits COMFY_ARGS on whitespace (read -a): quotes would make this check and
    # ComfyUI see different words, so none are allowed
    if re.search(r"[\"'\\\x00-\x1f\x7f]", value.replace(" ", "").replace("\t", "")):
        raise EnvError(
            f"{name}: must not hold quotes, backslashes or control characters (it is split on "
            "spaces, as start.sh splits it)"
        )
    if env.get("COMFY_NO_AUTH", "") in ("1", "true", "yes", "on"):
        return
    for word in value.split():
        option = word.split("=", 1)[0]
        # argparse (ComfyUI's) takes any unambiguous prefix of an option: --liste is --listen
        owned = [own for own in COMFY_ARGS_OWN if len(option) > 2 and own.startswith(option)]
        if option.startswith("--") and owned:
            raise EnvError(
                f"{name}: must not set {owned[0]} ({word!r}; start.sh sets it: COMFY_LISTEN, "
                "COMFY_PORT, AICLIPSE_ALLOWED_ORIGINS)"
            )


@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    check: Callable[[Mapping[str, str], str], None]


RULES = (
    Rule(tuple(PORTS), _check_port),
    Rule(NAMES, _check_name),
    Rule(LISTENS, _check_listen),
    Rule(PATHS, _check_path),
    Rule(SWITCHES, _check_switch),
    Rule(tuple(MIN_LENGTHS), _check_secret),
    Rule(KEY_VARS, _check_keys),
    Rule(tuple(RETIRED), _check_retired),
    Rule(("RUNPOD_POD_ID",), _check_pod),
    Rule(("AICLIPSE_ALLOWED_ORIGINS",), _check_origins),
    Rule(("MODELS_JOBS",), _check_jobs),
    Rule(("COMFY_ARGS",), _check_comfy_args),
    Rule(("AICLIPSE_PASS_ENV",), _check_pass_env),
)


def check_environment(env: Mapping[str, str]) -> list[str]:
    """Every broken rule, one message each (variables that are unset use their defaults)."""
    errors = []
    for rule in RULES:
        for name in rule.names:
            if name in env and (env[name] != "" or rule.check is _check_retired):
                try:
                    rule.check(env, name)
                except EnvError as err:
                    errors.append(str(err))
    if not errors:
        comfy, internal = port(env, "COMFY_PORT"), port(env, "COMFY_INTERNAL_PORT")
        if comfy == internal:
            errors.append(f"COMFY_INTERNAL_PORT={internal}: must differ from COMFY_PORT")
    return errors


def cmd_validate(env: Mapping[str, str]) -> int:
    errors = check_environment(env)
    for error in errors:
        print(f"invalid variable: {error}", file=sys.stderr)
    if errors:
        return EXIT_USAGE
    print("environment: every variable checked")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# The authenticating proxy in front of ComfyUI (Caddy).


def bcrypt(password: str, current: str | None = None) -> str:
    """A bcrypt hash of ``password``; ``current`` is kept while it still matches it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt through glibc's libxcrypt

        if current and crypt.crypt(password, current) == current:
            return current
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not hashed or not hashed.startswith("$2"):
        raise RuntimeError("this system's crypt() has no bcrypt")
    return hashed


def origin_regexp(allowed: list[str]) -> str:
    return "^(" + "|".join(re.escape(origin) for origin in allowed) + ")$"


def caddyfile(
    listen: str, port: int, upstream: int, user: str, hashed: str, allowed: list[str]
) -> str:
    """Basic auth in front of 127.0.0.1:<upstream>. A request carrying an ``Origin`` that is
    not the proxy's own (scheme://Host) nor one of ``allowed`` gets 403 before anything else,
    WebSocket handshakes included; so does one whose ``Sec-Fetch-Site`` is ``cross-site`` or
    ``same-site`` without an allowed ``Origin`` (a top-level GET navigation excepted); allowed
    ones get CORS headers naming that origin."""
    same = (
        '{http.request.header.Origin} == "http://" + {http.request.hostport} || '
        '{http.request.header.Origin} == "https://" + {http.request.hostport}'
    )
    listed = f'\t\t\tnot header_regexp Origin "{origin_regexp(allowed)}"\n' if allowed else ""
    # Fetch metadata (browsers send it on every request, with or without Origin): a
    # cross-site or same-site (another pod's page: proxy.runpod.net is one site) request is
    # refused unless it comes from an allowed origin, so an <img>, <script>, no-cors fetch or
    # WebSocket from another page never gets as far as the browser's remembered credential.
    # One kind passes: a top-level GET navigation (a link to the UI, RunPod's console
    # "Connect"), which shows the page to the user and carries no body.
    encoded = base64.b64encode(hashed.encode()).decode()
    host = f"[{listen}]" if ":" in listen else listen
    return (
        "# Written by start.sh (aiclipse_config.py proxy) at every start; do not edit.\n"
        "{\n\tadmin off\n\tauto_https off\n\tlog {\n\t\tlevel WARN\n\t}\n}\n"
        f"http://:{port} {{\n"
        f"\tbind {host}\n"
        "\troute {\n"
        "\t\t@foreign {\n"
        "\t\t\theader Origin *\n"
        f"{listed}"
        f"\t\t\tnot expression {same}\n"
        "\t\t}\n"
        '\t\trespond @foreign "origin not allowed" 403\n'
        "\t\t@crosssite {\n"
        '\t\t\theader_regexp site Sec-Fetch-Site "(?i)^(cross-site|same-site)$"\n'
        f"{listed}"
        "\t\t\tnot {\n"
        "\t\t\t\tmethod GET HEAD\n"
        "\t\t\t\theader Sec-Fetch-Mode navigate\n"
        "\t\t\t\theader Sec-Fetch-Dest document\n"
        "\t\t\t}\n"
        "\t\t}\n"
        '\t\trespond @crosssite "cross-site request not allowed" 403\n'
        "\t\t@cors header Origin *\n"
        '\t\theader @cors Access-Control-Allow-Origin "{http.request.header.Origin}"\n'
        "\t\theader @cors Access-Control-Allow-Credentials true\n"
        "\t\theader @cors Vary Origin\n"
        "\t\t@preflight {\n"
        "\t\t\tmethod OPTIONS\n"
        "\t\t\theader Origin *\n"
        "\t\t\theader Access-Control-Request-Method *\n"
        "\t\t}\n"
        '\t\theader @preflight Access-Control-Allow-Methods "GET, POST, PUT, PATCH, DELETE"\n'
        '\t\theader @preflight Access-Control-Allow-Headers "Authorization, Content-Type"\n'
        "\t\trespond @preflight 204\n"
        "\t\tbasicauth {\n"
        f"\t\t\t{user} {encoded}\n"
        "\t\t}\n"
        f"\t\treverse_proxy 127.0.0.1:{upstream}\n"
        "\t}\n"
        "}\n"
    )


def _current_hash(path: Path) -> str | None:
    try:
        match = re.search(r"basicauth \{\n\t+\S+ (\S+)\n", path.read_text(encoding="utf-8"))
    except OSError:
        return None
    return base64.b64decode(match[1]).decode() if match else None


def cmd_proxy(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    config_path, token_path = folder / "Caddyfile", folder / "token"
    token = env.get("COMFY_TOKEN", "")
    if token:
        how = "token from COMFY_TOKEN"
    else:
        token, generated = stored_token(token_path)
        how = (
            f"generated token (shown once, kept in {token_path}): {token}"
            if generated
            else f"token generated at first start (in {token_path})"
        )
    hashed = bcrypt(token, _current_hash(config_path))
    text = caddyfile(args.listen, args.port, args.upstream_port, args.user, hashed, args.origin)
    changed = write_if_changed(config_path, text, 0o640)
    if args.group is not None:
        os.chown(config_path, -1, args.group)
    allowed = ", ".join(args.origin) or "none but its own"
    state = "written" if changed else "unchanged"
    print(f"user {args.user}, {how}; cross-origin: {allowed}; {config_path} {state}")
    return EXIT_OK


# ComfyUI-Manager's security levels, weakest first (3.x says normal-, 4.x normal-minus).
MANAGER_LEVELS = ("weak", "normal-", "normal-minus", "normal", "strong")
MANAGER_RANK = {"weak": 0, "normal-": 1, "normal-minus": 1, "normal": 2, "strong": 3}
# Manager 4.x switches that open what the level closes: never on unless the image says so.
MANAGER_SWITCHES = ("allow_git_url_install", "allow_pip_install", "allow_flagged_nodepack_install")
# Where Manager reads its config.ini under ComfyUI's user directory, by how it is installed.
# The comfyui-manager package (4.x, ComfyUI >= 0.4 with --enable-manager) reads only
# folder_paths.get_system_user_directory("manager"), i.e. <user>/__manager/config.ini. A git
# clone reads that folder from 3.38 on where ComfyUI has the system-user API (the folder the
# userdata API cannot write), else <user>/default/ComfyUI-Manager (3.x before, old ComfyUI).
MANAGER_CONFIGS = {
    "package": ("__manager/config.ini",),
    "git": ("__manager/config.ini", "default/ComfyUI-Manager/config.ini"),
}


class ManagerConfigError(RuntimeError):
    """The config Manager would read cannot be made to hold the image's level."""


def manager_view(text: str) -> dict[str, str]:
    """What Manager reads from a config.ini's text, parsed as Manager parses it
    (``configparser.ConfigParser(strict=False)``: duplicate sections merge, the last of
    duplicate keys wins, key names are case-insensitive, ``[DEFAULT]`` fills in, ``%(x)s``
    interpolates); its values are then ``config['default'][key]``. Raises what configparser
    raises (Manager then falls back to its defaults)."""
    parser = configparser.ConfigParser(strict=False)
    parser.read_string(text)
    section = parser["default"] if parser.has_section("default") else parser[parser.default_section]
    return {key: section[key] for key in section}


def manager_weakness(view: Mapping[str, str], floor: str, image: Mapping[str, str]) -> list[str]:
    """What in Manager's view is weaker than the image's config ([] when nothing is)."""
    found = []
    level = view.get("security_level")
    level = None if level is None else level.lower()  # as Manager does; unknown ones rewritten
    if level not in MANAGER_RANK or MANAGER_RANK[level] < MANAGER_RANK[floor]:
        found.append(f"security_level {level if level is not None else 'unset'} -> {floor}")
    for key in MANAGER_SWITCHES:
        want = image.get(key, "false").strip().lower()
        if key in view and view[key].strip().lower() == "true" and want != "true":
            found.append(f"{key} {view[key]} -> false")
    return found


def enforce_manager_config(
    text: str, floor: str, image: Mapping[str, str]
) -> tuple[str, list[str]]:
    """``text`` with the image's level (and switches) where Manager reads them, other
    settings kept; ``(text, [])`` when nothing was weaker. A text configparser cannot read
    is replaced by a ``[default]`` of the level alone. The result is read back as Manager
    reads it and must hold the level, or ManagerConfigError."""
    try:
        view = manager_view(text)
        weak = manager_weakness(view, floor, image)
    except (configparser.Error, ValueError) as err:
        first = str(err).splitlines()[0]
        view, weak = {}, [f"unreadable ({type(err).__name__}: {first}) -> replaced"]
    if not weak:
        return text, []
    # One [default] section, keys lower-cased and interpolation resolved as Manager saw
    # them, '%' escaped so that writing and reading again gives the same values.
    view = {key: value for key, value in view.items() if key not in MANAGER_SWITCHES}
    view["security_level"] = floor
    for key in MANAGER_SWITCHES:
        if key in image:
            view[key] = image[key]
    lines = ["[default]"] + [f"{key} = {value.replace('%', '%%')}" for key, value in view.items()]
    fixed = "\n".join(line.replace("\n", "\n\t") for line in lines) + "\n"
    if manager_weakness(manager_view(fixed), floor, image):
        raise ManagerConfigError(f"the rewritten config still reads weaker: {fixed!r}")
    return fixed, weak


def cmd_manager_config(args: argparse.Namespace) -> int:
    """Give Manager the image's config where it reads it; an existing config keeps its other
    settings, but what Manager reads from it is never weaker than the image's (a volume from
    an older image or a hand edit cannot weaken it: duplicates, sections, case included)."""
    source = Path(args.source).read_text(encoding="utf-8")
    image = configparser.ConfigParser()  # the image's own file: strict, it must be clean
    image.read_string(source)
    image_view = dict(image["default"])
    floor = image_view.get("security_level", "normal").strip().lower()
    if floor not in MANAGER_RANK or MANAGER_RANK[floor] < MANAGER_RANK["normal"]:
        raise ManagerConfigError(f"{args.source}: security_level {floor!r} is weak")
    notes = []
    for rel in MANAGER_CONFIGS[args.mode]:
        path = Path(args.user_dir) / rel
        if not path.exists() and not path.is_symlink():
            write_if_changed(path, source)
            notes.append(f"{rel} written")
            continue
        if path.is_symlink() or not path.is_file():
            raise ManagerConfigError(f"{path} is not a plain file: remove it and start again")
        try:
            current = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            current = "\x00"  # not text Manager can read either: replaced below
        fixed, weak = enforce_manager_config(current, floor, image_view)
        if weak:
            write_if_changed(path, fixed)
            notes.append(f"{rel} {', '.join(weak)}")
        else:
            notes.append(f"{rel} kept ({manager_view(current)['security_level'].lower()})")
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
    jupyter.add_argument("--origin", action="append", default=[], help="an allowed origin")
    proxy = sub.add_parser("proxy")
    proxy.add_argument("--dir", required=True)
    proxy.add_argument("--listen", required=True)
    proxy.add_argument("--port", type=int, required=True)
    proxy.add_argument("--upstream-port", type=int, required=True)
    proxy.add_argument("--user", required=True, help="the basic-auth user name")
    proxy.add_argument("--group", type=int, help="GID to own the Caddyfile (the proxy's)")
    proxy.add_argument("--origin", action="append", default=[], help="an allowed origin")
    sub.add_parser("validate")
    sub.add_parser("filebrowser-hash")
    sub.add_parser("token")
    manager = sub.add_parser("manager-config")
    manager.add_argument("--source", required=True)
    manager.add_argument("--user-dir", required=True)
    manager.add_argument(
        "--mode", choices=sorted(MANAGER_CONFIGS), default="git", help="how Manager is installed"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "model-paths":
            return cmd_model_paths(args)
        if args.command == "jupyter":
            return cmd_jupyter(args, env)
        if args.command == "proxy":
            return cmd_proxy(args, env)
        if args.command == "validate":
            return cmd_validate(env)
        if args.command == "filebrowser-hash":
            return cmd_filebrowser_hash(env)
        if args.command == "manager-config":
            return cmd_manager_config(args)
    except (ManagerConfigError, OSError, RuntimeError, configparser.Error) as err:
        print(f"{args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(secrets.token_urlsafe(18))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
