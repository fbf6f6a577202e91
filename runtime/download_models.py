#!/usr/bin/env python3
"""Download the models of one or more models manifests onto the volume, verified.

Runs at container start (start.sh) and by hand. Standard library plus aria2c.

* A file is only ever at ``<dest>`` after it was verified: it is written to ``<dest>.part``;
  after the transfer the size, the content (no HTML/JSON error page, a consistent
  ``.safetensors`` header) and the sha256 are checked, then the file is renamed. Each file is
  read once: aria2c checks a manifest sha256 itself (``--checksum``), our own client hashes
  while it downloads, and only an aria2c download without a manifest sha256 is hashed after.
* A sidecar ``.<name>.verified.json`` (size, mtime_ns, sha256) written after verification
  makes the next start skip the file without reading it; ``.part``/``.aria2`` resume.
* Tokens (HF_TOKEN, CIVITAI_TOKEN) go only to their hosts, over https, chosen by the parsed
  host. Every redirect is followed by our own client, hop by hop: a token only ever goes to
  the manifest URL's own origin, https never downgrades to http, and a hop to any scheme
  but http/https is refused. A transfer that needs a token is made by that client (aria2c
  re-sends headers across redirects, so it never sees a token); aria2c downloads the
  token-free URLs (presigned storage, public files), reading URL and options from a pipe,
  with no token in its argv or environment, and with ftp/sftp (and plain http for an https
  URL) routed to a closed port, so its own redirect following cannot leave http(s).
* Deadlines: each request has a whole-request time limit (``--timeout``), a transfer slower
  than ``--lowest-speed-kib`` for ``--speed-window`` seconds stops, and probes and transfers
  run as one pipeline of ``--jobs`` files at a time, so one slow host delays only its files.
  A body of unknown size stops at the manifest ``size=`` or the volume's reserve.
* SIGTERM/SIGINT stop aria2c (which saves its ``.aria2`` state) and leave the ``.part``
  files to resume; no file on disk ever holds a token.
* ``<dest>.lock`` (flock) per destination: two containers on one volume never write the same
  ``.part``; the second waits and then finds the file verified.

Exit status: 0 all present, 1 some failed, 2 usage or manifest error, 3 a token is needed,
128+N stopped by signal N.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import fcntl
import hashlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

try:
    import manifests
except ImportError:  # run from the repository: the parser lives in module_utils/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))
    import manifests

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3
DEFAULT_MODELS_DIR = "/workspace/aiclipse/models"
DEFAULT_JOBS = 3
# Which environment variable holds the token for a host (the host and its subdomains).
DEFAULT_TOKEN_HOSTS: tuple[tuple[str, str], ...] = (
    ("huggingface.co", "HF_TOKEN"),
    ("civitai.com", "CIVITAI_TOKEN"),
)
TOKEN_VARS = ("HF_TOKEN", "CIVITAI_TOKEN")
# Tests only: "127.0.0.1=HF_TOKEN,127.0.0.3=CIVITAI_TOKEN" replaces the mapping above with
# loopback hosts (http allowed), because the real hosts cannot be reached from a test.
TOKEN_HOSTS_ENV = "AICLIPSE_TOKEN_HOSTS"
USER_AGENT = "aiclipse-download/1"
MAX_REDIRECTS = 10
PROBE_BYTES = 1024
CHUNK = 1024 * 1024
SPACE_CHECK_EVERY = 1024 * 1024  # bytes between free-space checks of a growing .part
SNIFF_JSON_MAX = 16 * 1024 * 1024
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
REDIRECTS = (301, 302, 303, 307, 308)
SCHEMES = ("http", "https")
PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")

# aria2c exit status -> (meaning and fix, retry the file?, remove the .part?)
ARIA2_EXIT: dict[int, tuple[str, bool, bool]] = {
    1: ("aria2c failed", True, False),
    2: ("timed out", True, False),
    3: ("not found (404): check the URL", False, True),
    4: ("not found (404) too many times: check the URL", False, True),
    5: ("download too slow (below --lowest-speed-kib): check the network or the server", True,
        False),
    6: ("network problem", True, False),
    7: ("aria2c was stopped before the download finished", False, False),
    8: ("server does not support resuming; starting over", True, True),
    9: ("disk full: free space on the volume or use a bigger one", False, True),
    10: ("control file does not match the download; starting over", True, True),
    11: ("the same file is being downloaded by another aria2c", True, False),
    13: ("file already exists", False, False),
    14: ("renaming failed", False, False),
    15: ("could not open the existing .part file", False, True),
    16: ("could not create or truncate the .part file (permissions? disk full?)", False, False),
    17: ("file I/O error (disk full or read-only volume?)", False, True),
    18: ("could not create the directory", False, False),
    19: ("name resolution failed (DNS)", True, False),
    22: ("unexpected HTTP response (rate limited or server error)", True, False),
    23: ("too many redirects", False, False),
    24: ("HTTP authorization failed: set or check the token", False, False),
    28: ("aria2c rejected an option (bug in download_models.py)", False, False),
    29: ("server temporarily overloaded or in maintenance (503)", True, False),
    32: ("sha256 mismatch: the file differs from the manifest's sha256", False, True),
}  # fmt: skip

# Counts whole-file hashes after a download, so tests can prove a warm start reads nothing.
HASH_CALLS = 0
_HASH_LOCK = threading.Lock()

# Set by SIGTERM/SIGINT: no new try starts; the aria2c processes in CHILDREN are stopped.
STOPPING = threading.Event()
CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Tokens and masking


@dataclass(frozen=True)
class TokenRule:
    host: str
    var: str
    allow_http: bool = False

    def matches(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        if host != self.host and not host.endswith("." + self.host):
            return False
        return parts.scheme == "https" or (self.allow_http and parts.scheme == "http")


def token_rules(env: Mapping[str, str]) -> tuple[TokenRule, ...]:
    """The host -> token variable mapping (the default, or the loopback test mapping)."""
    spec = env.get(TOKEN_HOSTS_ENV, "").strip()
    if not spec:
        return tuple(TokenRule(host, var) for host, var in DEFAULT_TOKEN_HOSTS)
    rules = []
    for item in spec.split(","):
        host, _, var = item.strip().partition("=")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback or not var:
            raise UsageError(
                f"{TOKEN_HOSTS_ENV}: '{item}' must be <loopback IP>=<VARIABLE>; it exists for "
                "tests only, the real hosts are huggingface.co and civitai.com"
            )
        rules.append(TokenRule(host, var, allow_http=True))
    return tuple(rules)


@dataclass(frozen=True)
class Token:
    var: str
    value: str | None  # None: the host wants this variable but it is not set


def token_for(url: str, rules: Sequence[TokenRule], env: Mapping[str, str]) -> Token | None:
    for rule in rules:
        if rule.matches(url):
            return Token(rule.var, env.get(rule.var) or None)
    return None


_SECRET_QUERY = re.compile(
    r"((?:^|[?&;])(?:token|api_key|apikey|access_token|x-amz-signature|x-amz-credential|"
    r"x-amz-security-token|signature|sig|policy|key-pair-id)=)[^&;\s\"']+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)


class Masker:
    """Replaces every secret value (and signed-URL parameters) with ***."""

    def __init__(self, secrets: Sequence[str]):
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        text = _SECRET_QUERY.sub(r"\1***", text)
        return _BEARER.sub(r"\1***", text)


class Log:
    """Thread-safe, masked, one line at a time."""

    def __init__(self, masker: Masker, stream=None):
        self.mask = masker
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        with self._lock:
            print(self.mask(message), file=self.stream, flush=True)


class UsageError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Files: sidecar, content checks, hashing


def sha256_file(path: Path) -> str:
    global HASH_CALLS
    with _HASH_LOCK:
        HASH_CALLS += 1
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.verified.json")


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def control_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.aria2")


def lock_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".lock")


def read_sidecar(dest: Path) -> dict | None:
    try:
        data = json.loads(sidecar_path(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_present(entry: manifests.ModelEntry, dest: Path) -> bool:
    """Verified earlier and unchanged since: no read of the file itself."""
    data = read_sidecar(dest)
    if data is None:
        return False
    try:
        stat = dest.stat()
    except OSError:
        return False
    if data.get("size") != stat.st_size or data.get("mtime_ns") != stat.st_mtime_ns:
        return False
    if entry.size is not None and entry.size != stat.st_size:
        return False
    return entry.sha256 is None or entry.sha256 == data.get("sha256")


def write_sidecar(dest: Path, sha256: str, url: str) -> None:
    stat = dest.stat()
    data = {
        "version": 1,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256,
        "url": _SECRET_QUERY.sub(r"\1***", url),
        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    target = sidecar_path(dest)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, target)


_MARKUP = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml", b"<!--", b"<title")
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def markup_problem(head: bytes, name: str) -> str | None:
    if name.lower().endswith((".html", ".htm", ".xml")):
        return None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(_MARKUP):
        return "the server sent an HTML/XML page (a login or error page?), not a model"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete .safetensors file, or None."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            return f"safetensors file is only {size} bytes"
        length = int.from_bytes(raw, "little")
        if length < 2 or length > SAFETENSORS_MAX_HEADER or 8 + length > size:
            return (
                f"safetensors header length {length} does not fit a {size}-byte file "
                "(truncated, or not a safetensors file)"
            )
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return "safetensors header is not valid JSON (not a safetensors file?)"
    if not isinstance(header, dict):
        return "safetensors header is not a JSON object"
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            return f"safetensors tensor '{key}' has no valid data_offsets"
        width = _DTYPE_BYTES.get(str(info.get("dtype")))
        shape = info.get("shape")
        if width and isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            count = 1
            for dim in shape:
                count *= dim
            if count * width != stop - begin:
                return f"safetensors tensor '{key}' data_offsets do not match its shape"
        end = max(end, stop)
    if 8 + length + end != size:
        return (
            f"safetensors data ends at byte {8 + length + end} but the file has {size} bytes "
            "(truncated or corrupt)"
        )
    return None


def content_problem(path: Path, name: str) -> str | None:
    """Refuse error pages saved as models, and inconsistent .safetensors files."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if name.lower().endswith(".safetensors"):
        return safetensors_problem(path)
    problem = markup_problem(head, name)
    if problem:
        return problem
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    size = path.stat().st_size
    if (
        not name.lower().endswith(".json")
        and stripped[:1] in (b"{", b"[")
        and size <= SNIFF_JSON_MAX
    ):
        try:
            json.loads(path.read_bytes())
        except ValueError:
            return None
        return f"the server sent a JSON document, not a model: {stripped[:160]!r}"
    return None


# --------------------------------------------------------------------------------------------
# HTTP: our own client (http/https only, a whole-request deadline, hop-by-hop redirects)


def _digits(value: str) -> bool:
    """ASCII digits only (``str.isdigit`` takes '²', which int() refuses)."""
    return value.isascii() and value.isdigit()


class DownloadError(Exception):
    def __init__(
        self,
        message: str,
        auth_needed: bool = False,
        retry: bool = False,
        headers=None,
        discard: bool = False,
    ):
        super().__init__(message)
        self.auth_needed = auth_needed
        self.retry = retry  # a transient failure: another try may succeed
        self.headers = headers  # the answer's headers (Retry-After), when there was one
        self.discard = discard  # the .part cannot resume (or is wrong): remove it


class Stopped(Exception):
    """SIGTERM/SIGINT arrived: stop, keep what can resume."""


class _Watchdog:
    """Shuts the sockets of one request down when its deadline passes (a whole-request
    limit: a server that trickles one byte per socket timeout cannot hold it longer)."""

    def __init__(self) -> None:
        self._socks: list[socket.socket] = []
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self.fired = False

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.fired:
                self._shutdown(sock)

    def arm(self, seconds: float) -> None:
        self.disarm()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._socks:
                self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _watched(base: type[http.client.HTTPConnection], watchdog: _Watchdog):
    class Connection(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            create = self._create_connection

            def created(*a, **kw):
                sock = create(*a, **kw)
                watchdog.attach(sock)
                return sock

            self._create_connection = created

    return Connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self.watchdog = watchdog

    def http_open(self, req):
        return self.do_open(_watched(http.client.HTTPConnection, self.watchdog), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self.watchdog = watchdog

    def https_open(self, req):
        connection = _watched(http.client.HTTPSConnection, self.watchdog)
        return self.do_open(connection, req, context=self._context)


def opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    """An opener that knows http and https only (no file:, ftp:, data:), follows no redirect
    and raises for no status: every answer comes back to the caller; any other scheme raises
    URLError (unknown url type)."""
    director = urllib.request.OpenerDirector()
    handlers = (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _HTTPHandler(watchdog),
        _HTTPSHandler(watchdog),
    )
    for handler in handlers:
        director.add_handler(handler)
    return director


def redact_url(url: str) -> str:
    """The URL without user:password and with signed-query values hidden."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return _SECRET_QUERY.sub(r"\1***", urlunsplit(parts._replace(netloc=netloc)))


def check_hop(url: str, previous: str | None, hop: int) -> None:
    """Refuse a hop to a scheme other than http/https, and an https -> http downgrade."""
    scheme = urlsplit(url).scheme.lower()
    where = f"redirect hop {hop} (from {redact_url(previous)})" if previous else "the URL"
    if scheme not in SCHEMES:
        raise DownloadError(
            f"{where} goes to {redact_url(url)}: scheme '{scheme}:' refused, only http and "
            "https are opened; fix the URL or report the server"
        )
    if previous and urlsplit(previous).scheme.lower() == "https" and scheme == "http":
        raise DownloadError(
            f"{where} goes to {redact_url(url)}: an https -> http downgrade is refused; "
            "fix the URL or report the server"
        )


@dataclass(frozen=True)
class Probe:
    """Where the transfer starts, and what the server told us."""

    url: str
    token: Token | None  # sent to ``url`` only: the manifest URL's own origin
    size: int | None
    ranges: bool = True  # the server answered our Range request with 206


def retry_after(headers: Mapping[str, str] | None, default: float, cap: float) -> float:
    """Seconds to wait: the Retry-After header (seconds or HTTP date) else ``default``."""
    value = (headers or {}).get("Retry-After")
    wait = default
    if value:
        value = value.strip()
        if _digits(value):
            wait = float(value)
        else:
            with contextlib.suppress(TypeError, ValueError):
                when = email.utils.parsedate_to_datetime(value)
                wait = max(0.0, when.timestamp() - time.time())
    return max(0.0, min(wait, cap))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def pause(seconds: float) -> None:
    """Sleep, but wake for SIGTERM/SIGINT."""
    if STOPPING.wait(seconds):
        raise Stopped


@dataclass(frozen=True)
class Settings:
    models_dir: Path
    jobs: int = DEFAULT_JOBS
    dry_run: bool = False
    max_tries: int = 5
    retry_wait: float = 3.0
    max_wait: float = 300.0
    connect_timeout: int = 30
    timeout: int = 60
    lowest_speed: int = 10 * 1024  # bytes/s
    speed_window: int = 60  # seconds
    connections: int = 4
    reserve: int = 100 * 1024 * 1024
    progress: bool = False
    aria2c: str = "aria2c"


class Tries:
    """One retry budget per file: every failed request or transfer (probe or aria2c or our
    own client) spends one try; aria2c itself does not retry (``--max-tries=1``)."""

    def __init__(self, settings: Settings, log: Log, label: str):
        self.settings, self.log, self.label = settings, log, label
        self.used = 0

    def failed(self, err: DownloadError) -> None:
        """Wait before the next try (Retry-After honoured), or raise when none is left."""
        self.used += 1
        s = self.settings
        if not err.retry or self.used >= s.max_tries:
            tail = f" (after {self.used} tries)" if err.retry else ""
            raise DownloadError(f"{err}{tail}", auth_needed=err.auth_needed) from err
        wait = retry_after(err.headers, s.retry_wait * 2 ** (self.used - 1), s.max_wait)
        self.log(f"  {self.label}: {err}; retry in {wait:g}s (try {self.used} of {s.max_tries})")
        pause(wait)


_ARIA2_ERROR = re.compile(r"errorCode=\d+\s+(.*\S)")
_ARIA2_REDIRECT = re.compile(r"Redirecting to (\S+)")
_ARIA2_NOISE = ("If there are any errors", "(ERR):error occurred", "Download Results",
                "gid   |stat|", "Status Legend", "(OK):", "(INPR):", "(ERR):")  # fmt: skip


def aria2_error_line(lines: Sequence[str]) -> str | None:
    """aria2c's own reason (its last ``errorCode=N reason`` line), not its footer."""
    for line in reversed(lines):
        found = _ARIA2_ERROR.search(line)
        if found:
            return found.group(1)
    for line in reversed(lines):
        if line.strip() and not line.lstrip().startswith(_ARIA2_NOISE) and "=====" not in line:
            return line.strip()
    return None


_DEAD_PROXY: list[socket.socket] = []


def dead_proxy() -> str:
    """A loopback port bound but never listening: connecting to it is refused at once. aria2c
    gets it as the proxy of every scheme it must not open after a redirect."""
    if not _DEAD_PROXY:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        _DEAD_PROXY.append(sock)
    return f"http://127.0.0.1:{_DEAD_PROXY[0].getsockname()[1]}"


class Downloader:
    def __init__(self, settings: Settings, env: Mapping[str, str], log: Log):
        self.settings = settings
        self.env = env
        self.rules = token_rules(env)
        self.log = log
        self.space_lock = threading.Lock()
        self.in_flight: dict[Path, int] = {}  # .part path -> expected size

    # -- HTTP --------------------------------------------------------------------------------

    def _get(self, url: str, token: Token | None, headers: Mapping[str, str], deadline: float):
        """One GET, no redirect following; the watchdog stops it at ``deadline``."""
        sent = {"User-Agent": USER_AGENT, **headers}
        if token and token.value:
            sent["Authorization"] = f"Bearer {token.value}"
        watchdog = _Watchdog()
        watchdog.arm(deadline - time.monotonic())
        request = urllib.request.Request(url, headers=sent, method="GET")
        host = urlsplit(url).hostname
        try:
            response = opener(watchdog).open(request, timeout=self.settings.timeout)
            if watchdog.fired:
                response.close()
                raise OSError("deadline")
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            watchdog.disarm()
            if watchdog.fired:
                raise self._late(host) from err
            reason = getattr(err, "reason", err)
            raise DownloadError(f"cannot reach {host}: {reason}", retry=True) from err
        return response, watchdog

    def _late(self, host: str | None) -> DownloadError:
        return DownloadError(
            f"{host} sent no complete answer within {self.settings.timeout} s (--timeout, "
            "the whole request); the server is too slow or stuck",
            retry=True,
        )

    def follow(self, url: str, headers: Mapping[str, str], deadline: float):
        """GET ``url``, following redirects ourselves: each hop is checked (http/https only, no
        downgrade) and the token goes to the first URL's own origin only.
        Returns (response, watchdog, final url, token sent there)."""
        origin = _origin(url)
        previous = None
        for hop in range(MAX_REDIRECTS + 1):
            check_hop(url, previous, hop)
            token = token_for(url, self.rules, self.env) if _origin(url) == origin else None
            response, watchdog = self._get(url, token, headers, deadline)
            if response.status not in REDIRECTS:
                return response, watchdog, url, token
            location = response.headers.get("Location")
            response.close()
            watchdog.disarm()
            if not location:
                raise DownloadError(f"HTTP {response.status} from {urlsplit(url).hostname} "
                                    "without a Location")  # fmt: skip
            try:
                previous, url = url, urljoin(url, location.strip())
                _origin(url)  # a port out of range or a broken IPv6 literal raises here
            except ValueError as err:
                raise DownloadError(
                    f"HTTP {response.status} from {urlsplit(previous).hostname}: an unusable "
                    f"Location ({err})"
                ) from None
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {redact_url(url)}")

    def _status_error(self, status: int, url: str, token: Token | None, headers, body: bytes):
        host = urlsplit(url).hostname
        if status == 429 or status >= 500:
            return DownloadError(f"HTTP {status} from {host}", retry=True, headers=headers)
        if status in (401, 403):
            if token and not token.value:
                return DownloadError(
                    f"HTTP {status} from {host}: this file needs a token; set {token.var}",
                    auth_needed=True,
                )
            if token:
                return DownloadError(
                    f"HTTP {status} from {host}: {token.var} was refused (no access to a "
                    "gated model? accept its licence on the site, or check the token)"
                )
            return DownloadError(f"HTTP {status} from {host}: access denied")
        if status in (404, 410):
            return DownloadError(f"HTTP {status} from {host}: not found; check the URL")
        return DownloadError(f"HTTP {status} from {host}: unexpected answer")

    def probe(self, entry: manifests.ModelEntry) -> Probe:
        """The first bytes, through every redirect, within one ``--timeout``."""
        deadline = time.monotonic() + self.settings.timeout
        headers = {"Range": f"bytes=0-{PROBE_BYTES - 1}"}
        response, watchdog, url, token = self.follow(entry.url, headers, deadline)
        try:
            body = b""
            while len(body) < PROBE_BYTES:
                chunk = response.read1(PROBE_BYTES - len(body))
                if not chunk:
                    break
                body += chunk
        except (OSError, http.client.HTTPException) as err:
            if watchdog.fired:
                raise self._late(urlsplit(url).hostname) from err
            raise DownloadError(f"{urlsplit(url).hostname}: {err}", retry=True) from err
        finally:
            watchdog.disarm()
            response.close()
        if watchdog.fired:  # the deadline cut the body short
            raise self._late(urlsplit(url).hostname)
        if response.status not in (200, 206):
            raise self._status_error(response.status, url, token, response.headers, body)
        return self._accept(entry, url, token, response.status, response.headers, body)

    def _accept(self, entry, url, token, status: int, headers, body: bytes) -> Probe:
        size = None
        content_range = headers.get("Content-Range", "")
        if status == 206 and "/" in content_range:
            total = content_range.rsplit("/", 1)[1].strip()
            size = int(total) if _digits(total) else None
        elif status == 200 and _digits(headers.get("Content-Length") or ""):
            size = int(headers["Content-Length"])
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        problem = markup_problem(body, entry.name)
        name = entry.name.lower()
        if problem is None and content_type in ("text/html", "application/xhtml+xml"):
            if not name.endswith((".html", ".htm")):
                problem = f"the server sent {content_type} (a login or error page?), not a model"
        elif problem is None and content_type == "application/json" and not name.endswith(".json"):
            problem = f"the server sent JSON, not a model: {body[:160]!r}"
        if problem:
            raise DownloadError(problem)
        if entry.size is not None and size is not None and size != entry.size:
            raise DownloadError(
                f"server reports {size} bytes, the manifest says size={entry.size}; "
                "fix the manifest or the URL"
            )
        return Probe(url, token, size, ranges=status == 206)

    # -- space -------------------------------------------------------------------------------

    @staticmethod
    def free_bytes(path: Path) -> int:
        while not path.exists():
            path = path.parent
        stat = os.statvfs(path)
        return stat.f_bavail * stat.f_frsize

    def reserve_space(self, part: Path, expected: int | None) -> None:
        """Per-file check, counting what downloads in flight on this volume still write."""
        with self.space_lock:
            have = part.stat().st_size if part.exists() else 0
            need = max(0, (expected or 0) - have)
            owed = 0
            dev = os.stat(part.parent).st_dev
            for other, size in self.in_flight.items():
                if os.stat(other.parent).st_dev == dev:
                    done = other.stat().st_size if other.exists() else 0
                    owed += max(0, size - done)
            free = self.free_bytes(part.parent) - owed - self.settings.reserve
            if expected is not None and need > free:
                raise DownloadError(
                    f"not enough free space: needs {human(need)} more, {human(max(free, 0))} "
                    f"available on {part.parent} (keeping {human(self.settings.reserve)} "
                    "free); free space or use a bigger volume"
                )
            self.in_flight[part] = expected or 0

    def release_space(self, part: Path) -> None:
        with self.space_lock:
            self.in_flight.pop(part, None)

    def bound_problem(
        self, part: Path, size: int, entry: manifests.ModelEntry, probe: Probe
    ) -> DownloadError | None:
        """Why a growing .part must stop now (over size=, or the size is unknown and the
        volume's reserve would be crossed), or None. The .part stays only if it can resume."""
        if entry.size is not None and size > entry.size:
            return DownloadError(
                f"the server sent more than the manifest's size={entry.size} bytes; "
                "fix the manifest or the URL",
                discard=True,
            )
        if entry.size is None and probe.size is not None and size > probe.size:
            # the probe said how big the file is; a body that goes on past it never ends
            return DownloadError(
                f"the server sent more than the {probe.size} bytes it announced; "
                "check the URL or add size= to the manifest line",
                discard=True,
                retry=True,
            )
        if probe.size is None and self.free_bytes(part.parent) < self.settings.reserve:
            return DownloadError(
                f"stopped at {human(size)}: the size is unknown and the volume's free space "
                f"fell below the reserve ({human(self.settings.reserve)}, --reserve-mib); "
                "free space, use a bigger volume, or add size= to the manifest line",
                discard=not probe.ranges,
            )
        return None

    # -- our own client: transfers that carry a token ----------------------------------------

    def fetch(self, entry: manifests.ModelEntry, probe: Probe, part: Path) -> str:
        """Download ``probe.url`` into ``part`` (resuming), hashing as it goes; every redirect
        re-checked by ``follow``. Returns the sha256 of the whole file."""
        s = self.settings
        if control_path(part.with_suffix("")).exists():  # aria2c's .part may have holes
            remove_partial(part.with_suffix(""))
        have = part.stat().st_size if part.exists() else 0
        digest = hashlib.sha256()
        if have:
            with open(part, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
        headers = {"Range": f"bytes={have}-"} if have else {}
        deadline = time.monotonic() + s.timeout
        response, watchdog, url, token = self.follow(probe.url, headers, deadline)
        host = urlsplit(url).hostname
        try:
            status = response.status
            if status == 416 and have and probe.size == have:
                return digest.hexdigest()
            if status == 416 and have:  # a .part the server's file cannot continue
                raise DownloadError(
                    f"{host} refused to resume at {have} bytes (416; the file is "
                    f"{probe.size if probe.size is not None else 'of unknown size'}); "
                    "starting over",
                    discard=True,
                    retry=True,
                )
            if status not in (200, 206):
                raise self._status_error(status, url, token, response.headers, b"")
            if status == 206:
                found = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
                if not found or int(found.group(1)) != have:
                    raise DownloadError(f"{host} answered a resume with the wrong range; "
                                        "starting over", retry=True)  # fmt: skip
            elif have:  # 200: the server ignored the Range; start over
                have, digest = 0, hashlib.sha256()
            watchdog.disarm()  # from here: the socket timeout and the speed window
            with open(part, "ab" if have else "wb") as out:
                have = self._stream(entry, probe, response, out, part, digest, have)
            if probe.size is not None and have < probe.size:
                raise DownloadError(f"transfer from {host} ended at {have} of {probe.size} "
                                    "bytes", retry=True)  # fmt: skip
        except (OSError, http.client.HTTPException) as err:
            if watchdog.fired:
                raise self._late(host) from err
            raise DownloadError(f"transfer from {host} broke off: {err}", retry=True) from err
        finally:
            watchdog.disarm()
            response.close()
        return digest.hexdigest()

    def _stream(self, entry, probe, response, out, part: Path, digest, have: int) -> int:
        s = self.settings
        window_at, window_bytes, checked = time.monotonic(), 0, have
        while chunk := response.read1(CHUNK):
            if STOPPING.is_set():
                raise Stopped
            out.write(chunk)
            digest.update(chunk)
            have += len(chunk)
            window_bytes += len(chunk)
            if have - checked >= SPACE_CHECK_EVERY or (entry.size and have > entry.size):
                checked = have
                problem = self.bound_problem(part, have, entry, probe)
                if problem:
                    raise problem
            elapsed = time.monotonic() - window_at
            if elapsed >= s.speed_window:
                if window_bytes / elapsed < s.lowest_speed:
                    raise self._slow(window_bytes / elapsed)
                window_at, window_bytes = time.monotonic(), 0
        return have

    def _slow(self, speed: float) -> DownloadError:
        s = self.settings
        return DownloadError(
            f"download too slow: {human(speed)}/s, below {human(s.lowest_speed)}/s for "
            f"{s.speed_window} s (--lowest-speed-kib, --speed-window); check the network "
            "or the server",
            retry=True,
        )

    # -- aria2c: transfers without a token ---------------------------------------------------

    def aria2c_argv(self, entry: manifests.ModelEntry) -> list[str]:
        s = self.settings
        argv = [
            s.aria2c,
            "--input-file=-",  # URL and options from a pipe: nothing on disk, nothing in argv
            "--deferred-input=false",
            "--no-conf=true",
            "--no-netrc=true",
            "--continue=true",
            "--always-resume=false",
            "--max-resume-failure-tries=0",
            "--auto-file-renaming=false",
            "--allow-overwrite=true",
            "--remote-time=false",
            "--conditional-get=false",
            "--follow-metalink=false",
            "--follow-torrent=false",
            "--max-tries=1",  # one budget: our Tries counts every try (see --max-tries)
            f"--retry-wait={max(1, round(s.retry_wait))}",
            f"--connect-timeout={s.connect_timeout}",
            f"--timeout={s.timeout}",
            f"--lowest-speed-limit={s.lowest_speed}",
            f"--max-connection-per-server={s.connections}",
            f"--split={s.connections}",
            "--min-split-size=20M",
            "--file-allocation=none",
            "--auto-save-interval=1",  # a killed aria2c resumes from at most 1 s before
            "--console-log-level=notice",  # its redirect lines, to name a refused hop
            f"--summary-interval={10 if s.progress else 0}",
            "--show-console-readout=false",
            "--enable-color=false",
            "--download-result=hide",
            f"--stop-with-process={os.getpid()}",
            f"--user-agent={USER_AGENT}",
        ]
        if self.env.get("SSL_CERT_FILE"):  # the CA bundle our own client trusts (OpenSSL)
            argv.append(f"--ca-certificate={self.env['SSL_CERT_FILE']}")  # a global option
        if entry.sha256:
            argv.append(f"--checksum=sha-256={entry.sha256}")
        return argv

    def aria2c_input(self, probe: Probe, part: Path) -> str:
        """aria2c's input: the URL, dir/out (per-URI options: aria2c ignores a global --out
        with --input-file) and the proxies. Every scheme aria2c must not reach after a
        redirect (ftp, sftp, and http when the URL is https) goes to a closed port."""
        lines = [probe.url, f"  dir={part.parent}", f"  out={part.name}"]
        lines.append(f"  ftp-proxy={dead_proxy()}")  # ftp and sftp (aria2c 1.36)
        http = self._proxy("http") if urlsplit(probe.url).scheme == "http" else dead_proxy()
        for key, value in (("http-proxy", http), ("https-proxy", self._proxy("https"))):
            if value:
                lines.append(f"  {key}={value}")
        return "\n".join(lines) + "\n"

    def _proxy(self, scheme: str) -> str:
        return self.env.get(f"{scheme}_proxy") or self.env.get(f"{scheme.upper()}_PROXY") or ""

    def aria2c_env(self) -> dict[str, str]:
        """aria2c's environment: no token variable, no proxy variable (given in its input)."""
        drop = {*TOKEN_VARS, *(rule.var for rule in self.rules), TOKEN_HOSTS_ENV}
        return {
            key: value
            for key, value in self.env.items()
            if key not in drop and key.lower() not in PROXY_VARS
        }

    def run_aria2c(self, entry: manifests.ModelEntry, probe: Probe, part: Path, lock_fd: int):
        """Run aria2c for one file; returns (exit status, its output lines, why we stopped it
        or None, the redirects it followed)."""
        proc = subprocess.Popen(
            self.aria2c_argv(entry),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=self.aria2c_env(),
            pass_fds=(lock_fd,),  # aria2c holds the destination lock while it lives
        )
        with _CHILDREN_LOCK:
            CHILDREN.add(proc)
        stopped: list[DownloadError] = []
        done = threading.Event()

        def watch() -> None:  # unknown size: stop at size= or at the reserve
            while not done.wait(0.25):
                size = part.stat().st_size if part.exists() else 0
                problem = self.bound_problem(part, size, entry, probe)
                if problem:
                    stopped.append(problem)
                    proc.terminate()
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        lines: list[str] = []
        redirects: list[str] = []
        try:
            assert proc.stdin is not None and proc.stdout is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(self.aria2c_input(probe, part))
                proc.stdin.close()
            for line in proc.stdout:
                line = line.rstrip()
                if not line:
                    continue
                found = _ARIA2_REDIRECT.search(line)
                if found:
                    redirects.append(found.group(1))
                lines = [*lines[-19:], line]
                if self.settings.progress:
                    self.log(f"  {entry.dest}: {line}")
            status = proc.wait()
        finally:
            done.set()
            watcher.join()
            with _CHILDREN_LOCK:
                CHILDREN.discard(proc)
        return status, lines, (stopped[0] if stopped else None), redirects

    def aria2c_failure(self, entry, probe: Probe, part: Path, result) -> DownloadError:
        """One clear error for an aria2c run that did not end in exit 0."""
        status, lines, stopped, redirects = result
        if stopped:
            return stopped
        previous = probe.url
        for hop, url in enumerate(redirects, 1):
            try:
                check_hop(url, previous, hop)
            except DownloadError as err:
                return DownloadError(f"aria2c: {err}")
            previous = url
        if STOPPING.is_set():
            raise Stopped
        if status < 0:  # killed: its .part and .aria2 can resume
            return DownloadError(f"aria2c died of signal {-status}", retry=True)
        meaning, retry, remove = ARIA2_EXIT.get(status, ("unknown exit status", True, False))
        if status == 32 and part.exists():
            actual = sha256_file(part)
            meaning = (
                f"sha256 mismatch: got {actual}, the manifest says {entry.sha256}; "
                "fix the manifest or the URL"
            )
        why = aria2_error_line(lines) if status != 32 else None
        detail = f" ({why})" if why else ""
        return DownloadError(
            f"aria2c exit {status}: {meaning}{detail}",
            auth_needed=status == 24,
            retry=retry,
            discard=remove,
        )

    # -- one file ----------------------------------------------------------------------------

    def verify_file(
        self, entry: manifests.ModelEntry, path: Path, expected: int | None, digest: str | None
    ) -> str:
        """Size, content and sha256 of ``path`` (hashed here only when ``digest`` is None);
        returns the sha256 or raises DownloadError."""
        size = path.stat().st_size
        if expected is not None and size != expected:
            raise DownloadError(f"got {size} bytes, expected {expected}")
        problem = content_problem(path, entry.name)
        if problem:
            raise DownloadError(problem)
        if digest is None:
            digest = sha256_file(path)
        if entry.sha256 and digest != entry.sha256:
            raise DownloadError(
                f"sha256 mismatch: got {digest}, the manifest says {entry.sha256}; "
                "fix the manifest or the URL"
            )
        return digest

    def adopt_existing(self, entry: manifests.ModelEntry, dest: Path) -> bool:
        """A file at dest without a valid sidecar: verify it once, or move it aside."""
        try:
            digest = self.verify_file(entry, dest, entry.size, None)
        except DownloadError as err:
            aside = dest.with_name(dest.name + ".invalid")
            os.replace(dest, aside)
            self.log(f"  {entry.dest}: existing file failed verification ({err}); moved to {aside}")
            return False
        write_sidecar(dest, digest, entry.url)
        return True

    def download(self, job: Job) -> None:
        entry, dest = job.entry, job.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with destination_lock(dest, self.log, entry.dest) as lock_fd:
            if is_present(entry, dest):
                job.status, job.note = "present", "verified by another process"
                return
            if dest.exists() and self.adopt_existing(entry, dest):
                job.status, job.note = "present", "existing file verified"
                return
            self._download_locked(job, lock_fd)

    def _download_locked(self, job: Job, lock_fd: int) -> None:
        entry, dest = job.entry, job.dest
        part = part_path(dest)
        started = time.monotonic()
        start_bytes = part.stat().st_size if part.exists() else 0
        tries = Tries(self.settings, self.log, entry.dest)
        while True:
            if STOPPING.is_set():
                raise Stopped
            try:
                digest, expected = self._try(entry, part, lock_fd)
                break
            except DownloadError as err:
                tries.failed(err)
        try:
            digest = self.verify_file(entry, part, expected, digest)
        except DownloadError:
            remove_partial(dest)
            raise
        with open(part, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(part, dest)
        write_sidecar(dest, digest, entry.url)
        with contextlib.suppress(FileNotFoundError):
            control_path(dest).unlink()
        job.status = "downloaded"
        job.bytes = max(0, dest.stat().st_size - start_bytes)
        job.seconds = time.monotonic() - started

    def _try(self, entry, part: Path, lock_fd: int) -> tuple[str | None, int | None]:
        """One try: probe, then transfer. Returns (sha256 when known, expected size)."""
        probe = self.probe(entry)
        expected = entry.size if entry.size is not None else probe.size
        if not probe.ranges and part.exists():
            # No Range support: a .part cannot resume (and aria2c 1.36 aborts on it).
            self.log(f"  {entry.dest}: server cannot resume; starting over")
            remove_partial(part.with_suffix(""))
        self.reserve_space(part, expected)
        try:
            if probe.token and probe.token.value:
                return self.fetch(entry, probe, part), expected
            result = self.run_aria2c(entry, probe, part, lock_fd)
            if result[0] != 0:
                raise self.aria2c_failure(entry, probe, part, result)
        except DownloadError as err:
            if err.discard:
                remove_partial(part.with_suffix(""))
            raise
        finally:
            self.release_space(part)
        return (entry.sha256 or None), expected  # aria2c checked a manifest sha256 itself


@contextlib.contextmanager
def destination_lock(dest: Path, log: Log, label: str) -> Iterator[int]:
    fd = os.open(lock_path(dest), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"  {label}: another process is downloading it; waiting")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def remove_partial(dest: Path) -> None:
    for path in (part_path(dest), control_path(dest)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def human(size: float | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


# --------------------------------------------------------------------------------------------
# The batch


@dataclass
class Job:
    entry: manifests.ModelEntry
    dest: Path
    status: str = "pending"
    note: str = ""
    bytes: int = 0
    seconds: float = 0.0
    auth_needed: bool = False


def plan(entries: Sequence[manifests.ModelEntry], models_dir: Path) -> list[Job]:
    jobs = []
    for entry in entries:
        job = Job(entry, models_dir / entry.folder / entry.name)
        if is_present(entry, job.dest):
            job.status = "present"
        jobs.append(job)
    return jobs


def check_batch_space(downloader: Downloader, jobs: Sequence[Job]) -> str | None:
    """Sum what the manifest sizes (size=) still need per volume; a message when it does not
    fit. Files without size= are checked one by one once their probe tells the size."""
    need: dict[int, tuple[int, Path]] = {}
    for job in jobs:
        size = job.entry.size
        if size is None:
            continue
        part = part_path(job.dest)
        have = part.stat().st_size if part.exists() else 0
        dev = os.stat(job.dest.parent).st_dev
        total, _ = need.get(dev, (0, job.dest.parent))
        need[dev] = (total + max(0, size - have), job.dest.parent)
    for total, where in need.values():
        free = downloader.free_bytes(where) - downloader.settings.reserve
        if total > free:
            return (
                f"not enough free space for this batch: needs {human(total)}, "
                f"{human(max(free, 0))} available on {where} (keeping "
                f"{human(downloader.settings.reserve)} free); free space, use a bigger volume, "
                "or download fewer models"
            )
    return None


def run(entries: Sequence[manifests.ModelEntry], settings: Settings, log: Log, env) -> int:
    jobs = plan(entries, settings.models_dir)
    todo = [job for job in jobs if job.status != "present"]
    if settings.dry_run:
        for job in jobs:
            part = part_path(job.dest)
            if job.status == "present":
                state = "present"
            elif part.exists():
                state = f"resume ({human(part.stat().st_size)} in .part)"
            else:
                state = f"download ({human(job.entry.size)})"
            log(f"{state:<28} {job.entry.dest}  <- {redact_url(job.entry.url)}")
        return EXIT_OK
    downloader = Downloader(settings, env, log)
    if todo and shutil.which(settings.aria2c) is None:
        raise UsageError(f"aria2c not found ('{settings.aria2c}'); install aria2")
    log(f"{len(jobs) - len(todo)} present, {len(todo)} to download into {settings.models_dir}")
    for job in todo:
        job.dest.parent.mkdir(parents=True, exist_ok=True)
    short = check_batch_space(downloader, todo) if todo else None
    if short:
        log(f"[failed] {short}")
        for job in todo:
            job.status, job.note = "failed", "not enough free space for the batch"
        todo = []

    def fail(job: Job, err: DownloadError) -> None:
        job.status, job.note, job.auth_needed = "failed", str(err), err.auth_needed
        log(f"[failed] {job.entry.dest}: {err}")

    def work(job: Job) -> None:  # probe and transfer: one pipeline, --jobs files at a time
        if STOPPING.is_set():
            return
        try:
            downloader.download(job)
        except Stopped:
            job.status, job.note = "stopped", "stopped by a signal; resumes next time"
            return
        except DownloadError as err:
            fail(job, err)
            return
        except OSError as err:
            fail(job, DownloadError(f"{err.strerror or err}: {err.filename or ''}"))
            return
        except ValueError as err:  # a header no parser above expected; this file fails alone
            fail(job, DownloadError(f"unexpected answer: {err}"))
            return
        if job.status == "downloaded":
            speed = job.bytes / job.seconds if job.seconds > 0 else 0
            log(
                f"[done] {job.entry.dest} {human(job.dest.stat().st_size)} in "
                f"{job.seconds:.1f}s ({human(speed)}/s)"
            )
        else:
            log(f"[present] {job.entry.dest} ({job.note})")

    with ThreadPoolExecutor(max_workers=max(1, settings.jobs)) as pool:
        list(pool.map(work, todo))
    return summarize(jobs, log)


def summarize(jobs: Sequence[Job], log: Log) -> int:
    log("")
    log(f"{'STATUS':<11} {'SIZE':>10} {'TIME':>7} {'SPEED':>12}  DEST")
    for job in jobs:
        size = human(job.dest.stat().st_size) if job.dest.exists() else "-"
        spent = f"{job.seconds:.1f}s" if job.status == "downloaded" else "-"
        speed = (
            f"{human(job.bytes / job.seconds)}/s"
            if job.status == "downloaded" and job.seconds > 0
            else "-"
        )
        note = f"  ({job.note})" if job.status == "failed" else ""
        log(f"{job.status:<11} {size:>10} {spent:>7} {speed:>12}  {job.entry.dest}{note}")
    failed = [job for job in jobs if job.status == "failed"]
    downloaded = [job for job in jobs if job.status == "downloaded"]
    log(
        f"{len(jobs) - len(failed) - len(downloaded)} present, {len(downloaded)} downloaded "
        f"({human(sum(job.bytes for job in downloaded))}), {len(failed)} failed"
    )
    if any(job.auth_needed for job in failed):
        return EXIT_AUTH
    return EXIT_FAILED if failed else EXIT_OK


def load_manifest(path: str) -> list[manifests.ModelEntry]:
    """Parse one manifest with the shared parser; bytes that are not UTF-8 are named by
    file:line:column."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return manifests.load_models(path)  # its own message: file not found, ...
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise manifests.ManifestError(
            [
                manifests.ManifestIssue(
                    str(path), line, column,
                    f"not UTF-8 text (byte 0x{raw[err.start]:02x})", "save the file as UTF-8",
                )
            ]
        ) from err  # fmt: skip
    return manifests.parse_models(text, str(path))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--manifest", action="append", required=True, help="models manifest (repeatable)")
    add("--models-dir", default=DEFAULT_MODELS_DIR, help="default: %(default)s")
    add("--jobs", type=int, default=DEFAULT_JOBS, help="files at a time, probe and transfer "
        "together (default 3)")  # fmt: skip
    add("--dry-run", action="store_true", help="print what would happen; no network, no writes")
    add("--progress", action="store_true", help="show aria2c's own progress every 10 s")
    add("--max-tries", type=int, default=5,
        help="tries per file in all (default 5): every failed probe request or transfer "
        "spends one (aria2c itself does not retry), so a file is asked for at most this "
        "many times")  # fmt: skip
    add("--retry-wait", type=float, default=3.0, help="first backoff in seconds (doubles)")
    add("--max-wait", type=float, default=300.0, help="longest wait, Retry-After included")
    add("--timeout", type=int, default=60,
        help="seconds: the whole of one probe (all its redirects) and the start of a "
        "transfer; also aria2c's --timeout per socket operation (default 60)")  # fmt: skip
    add("--connect-timeout", type=int, default=30)
    add("--lowest-speed-kib", type=int, default=10,
        help="KiB/s: a transfer slower than this over --speed-window stops (and is retried "
        "within --max-tries); 0 disables (default 10)")  # fmt: skip
    add("--speed-window", type=int, default=60,
        help="seconds over which --lowest-speed-kib is measured by our own client (aria2c "
        "measures per connection after its 10 s start-up) (default 60)")  # fmt: skip
    add("--connections", type=int, default=4, help="aria2c connections per file")
    add("--reserve-mib", type=int, default=100, help="MiB to leave free on the volume")
    add("--aria2c", default=os.environ.get("AICLIPSE_ARIA2C", "aria2c"), help="aria2c binary")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.max_tries < 1 or args.connections < 1 or args.retry_wait <= 0:
        parser.error("--jobs, --max-tries, --connections must be >= 1 and --retry-wait > 0")
    if args.lowest_speed_kib < 0 or args.speed_window < 1:
        parser.error("--lowest-speed-kib must be >= 0 and --speed-window >= 1")
    return args


@contextlib.contextmanager
def stop_on_signals(log: Log) -> Iterator[None]:
    """SIGTERM/SIGINT: stop aria2c (it saves its .aria2 state), keep every .part, exit
    128+N. Nothing secret is on disk to clean up: tokens never leave this process."""

    def handler(signum, _frame):
        STOPPING.set()
        with _CHILDREN_LOCK:
            children = list(CHILDREN)
        for proc in children:
            with contextlib.suppress(OSError):
                proc.terminate()
        for proc in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        log(f"stopped by signal {signum}; partial downloads are kept and resume next time")
        os._exit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    log = Log(Masker([env.get(var, "") for var in TOKEN_VARS]))
    args = parse_args(argv)
    STOPPING.clear()
    try:
        rules = token_rules(env)
        log.mask = Masker([env.get(var, "") for var in {*TOKEN_VARS, *(r.var for r in rules)}])
        entries = manifests.merge_models(*(load_manifest(p) for p in args.manifest))
    except manifests.ManifestError as err:
        log(str(err))
        return EXIT_USAGE
    except UsageError as err:
        log(f"error: {err}")
        return EXIT_USAGE
    settings = Settings(
        models_dir=Path(args.models_dir),
        jobs=args.jobs,
        dry_run=args.dry_run,
        max_tries=args.max_tries,
        retry_wait=args.retry_wait,
        max_wait=args.max_wait,
        connect_timeout=args.connect_timeout,
        timeout=args.timeout,
        lowest_speed=args.lowest_speed_kib * 1024,
        speed_window=args.speed_window,
        connections=args.connections,
        reserve=args.reserve_mib * 1024 * 1024,
        progress=args.progress,
        aria2c=args.aria2c,
    )
    try:
        with stop_on_signals(log):
            return run(entries, settings, log, env)
    except UsageError as err:
        log(f"error: {err}")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
