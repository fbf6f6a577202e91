#!/usr/bin/env python3
"""Download the models of one or more models manifests onto the volume, verified.

Runs at container start (start.sh) and by hand. Standard library plus aria2c.

* A file is only ever at ``<dest>`` after it was verified: aria2c writes ``<dest>.part``;
  after aria2c exits 0 the size, the content (no HTML/JSON error page, a consistent
  ``.safetensors`` header) and the sha256 are checked, then the file is renamed.
* A sidecar ``.<name>.verified.json`` (size, mtime_ns, sha256) written after verification
  makes the next start skip the file without reading it; ``.part``/``.aria2`` resume.
* Tokens (HF_TOKEN, CIVITAI_TOKEN) go only to their hosts, over https, chosen by the parsed
  host; a URL that would get a token is resolved first (no redirect following) so aria2c
  never gets a token and a redirecting URL together; aria2c reads URL and header from a
  0600 input file, never argv. Logs mask every token value.
* ``<dest>.lock`` (flock) per destination: two containers on one volume never write the same
  ``.part``; the second waits and then finds the file verified.

Exit status: 0 all present, 1 some failed, 2 usage or manifest error, 3 a token is needed.
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
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

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
SNIFF_JSON_MAX = 16 * 1024 * 1024
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
REDIRECTS = (301, 302, 303, 307, 308)

# aria2c exit status -> (meaning and fix, retry the file?, remove the .part?)
ARIA2_EXIT: dict[int, tuple[str, bool, bool]] = {
    1: ("aria2c failed with an unknown error", True, False),
    2: ("timed out", True, False),
    3: ("not found (404): check the URL", False, True),
    4: ("not found (404) too many times: check the URL", False, True),
    5: ("download too slow (below the lowest speed limit)", True, False),
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
}

# Counts whole-file hashes, so tests can prove a warm start reads nothing.
HASH_CALLS = 0
_HASH_LOCK = threading.Lock()


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
# HTTP: resolve redirects (token-safe), sizes, backoff


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True)
class Probe:
    """Where aria2c should download from, and what the server told us."""

    url: str
    token: Token | None  # sent to ``url`` only: same origin as the manifest URL, no redirect
    size: int | None
    head: bytes
    content_type: str
    ranges: bool = True  # the server answered our Range request with 206
    at: float = field(default_factory=time.monotonic)


class DownloadError(Exception):
    def __init__(self, message: str, auth_needed: bool = False, retry: bool = False):
        super().__init__(message)
        self.auth_needed = auth_needed
        self.retry = retry


def retry_after(headers: Mapping[str, str] | None, default: float, cap: float) -> float:
    """Seconds to wait: the Retry-After header (seconds or HTTP date) else ``default``."""
    value = (headers or {}).get("Retry-After")
    wait = default
    if value:
        value = value.strip()
        if value.isdigit():
            wait = float(value)
        else:
            with contextlib.suppress(TypeError, ValueError):
                when = email.utils.parsedate_to_datetime(value)
                wait = max(0.0, when.timestamp() - time.time())
    return max(0.0, min(wait, cap))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


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
    connections: int = 4
    reserve: int = 100 * 1024 * 1024
    progress: bool = False
    aria2c: str = "aria2c"


class Downloader:
    def __init__(self, settings: Settings, env: Mapping[str, str], log: Log):
        self.settings = settings
        self.env = env
        self.rules = token_rules(env)
        self.log = log
        self.space_lock = threading.Lock()
        self.in_flight: dict[Path, int] = {}  # .part path -> expected size

    # -- HTTP --------------------------------------------------------------------------------

    def _request(self, url: str, token: Token | None) -> tuple[int, Mapping[str, str], bytes]:
        """One GET of the first bytes, no redirect following; retries 429/5xx/network."""
        headers = {"User-Agent": USER_AGENT, "Range": f"bytes=0-{PROBE_BYTES - 1}"}
        if token and token.value:
            headers["Authorization"] = f"Bearer {token.value}"
        s = self.settings
        for attempt in range(1, s.max_tries + 1):
            backoff = s.retry_wait * 2 ** (attempt - 1)
            request = urllib.request.Request(url, headers=headers, method="GET")
            try:
                with _OPENER.open(request, timeout=s.timeout) as response:
                    return response.status, response.headers, response.read(PROBE_BYTES)
            except urllib.error.HTTPError as err:
                status, got = err.code, err.headers
                body = err.read(512) if err.fp else b""
                err.close()
                if status == 429 or status >= 500:
                    if attempt == s.max_tries:
                        raise DownloadError(
                            f"HTTP {status} from {urlsplit(url).hostname} after {attempt} tries"
                        ) from err
                    wait = retry_after(got, backoff, s.max_wait)
                    self.log(f"  HTTP {status} from {urlsplit(url).hostname}; retry in {wait:g}s")
                    time.sleep(wait)
                    continue
                return status, got, body
            except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as err:
                reason = getattr(err, "reason", err)
                if attempt == s.max_tries:
                    raise DownloadError(f"cannot reach {urlsplit(url).hostname}: {reason}") from err
                wait = min(backoff, s.max_wait)
                self.log(f"  cannot reach {urlsplit(url).hostname} ({reason}); retry in {wait:g}s")
                time.sleep(wait)
        raise AssertionError("unreachable")

    def probe(self, entry: manifests.ModelEntry) -> Probe:
        """Follow redirects ourselves; a token goes only to its own host, never on."""
        url = entry.url
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            token = token_for(url, self.rules, self.env) if _origin(url) == origin else None
            status, headers, body = self._request(url, token)
            if status in REDIRECTS and headers.get("Location"):
                url = urljoin(url, headers["Location"])
                continue
            if status in (200, 206):
                return self._accept(entry, url, token, status, headers, body)
            host = urlsplit(url).hostname
            if status in (401, 403):
                if token and not token.value:
                    raise DownloadError(
                        f"HTTP {status} from {host}: this file needs a token; set {token.var}",
                        auth_needed=True,
                    )
                if token:
                    raise DownloadError(
                        f"HTTP {status} from {host}: {token.var} was refused (no access to a "
                        "gated model? accept its licence on the site, or check the token)"
                    )
                raise DownloadError(f"HTTP {status} from {host}: access denied")
            if status in (404, 410):
                raise DownloadError(f"HTTP {status} from {host}: not found; check the URL")
            raise DownloadError(f"HTTP {status} from {host}: unexpected answer")
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {entry.url}")

    def _accept(
        self,
        entry: manifests.ModelEntry,
        url: str,
        token: Token | None,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Probe:
        size = None
        content_range = headers.get("Content-Range", "")
        if status == 206 and "/" in content_range:
            total = content_range.rsplit("/", 1)[1].strip()
            size = int(total) if total.isdigit() else None
        elif status == 200 and (headers.get("Content-Length") or "").isdigit():
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
        return Probe(url, token, size, body, content_type, ranges=status == 206)

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

    # -- one file ----------------------------------------------------------------------------

    def aria2c_argv(self, input_file: str, entry: manifests.ModelEntry) -> list[str]:
        s = self.settings
        argv = [
            s.aria2c,
            f"--input-file={input_file}",
            "--no-conf=true",
            "--no-netrc=true",
            "--continue=true",
            "--always-resume=false",
            "--max-resume-failure-tries=0",
            "--auto-file-renaming=false",
            "--allow-overwrite=true",
            "--remote-time=false",
            "--conditional-get=false",
            f"--max-tries={s.max_tries}",
            f"--retry-wait={max(1, round(s.retry_wait))}",
            f"--connect-timeout={s.connect_timeout}",
            f"--timeout={s.timeout}",
            f"--max-connection-per-server={s.connections}",
            f"--split={s.connections}",
            "--min-split-size=20M",
            "--file-allocation=none",
            "--auto-save-interval=10",
            f"--console-log-level={'notice' if s.progress else 'warn'}",
            f"--summary-interval={10 if s.progress else 0}",
            "--show-console-readout=false",
            "--enable-color=false",
            "--download-result=hide",
            f"--stop-with-process={os.getpid()}",
            f"--user-agent={USER_AGENT}",
        ]
        if entry.sha256:
            argv.append(f"--checksum=sha-256={entry.sha256}")
        return argv

    def run_aria2c(self, entry: manifests.ModelEntry, probe: Probe, part: Path, lock_fd: int):
        """Run aria2c for one file; returns (exit status, last output lines)."""
        private = tempfile.mkdtemp(prefix="aiclipse-aria2-")  # mode 0700
        input_file = os.path.join(private, "input.txt")
        # dir/out are per-URI options: aria2c ignores a global --out with --input-file.
        lines = [probe.url + "\n", f"  dir={part.parent}\n", f"  out={part.name}\n"]
        if probe.token and probe.token.value:
            lines.append(f"  header=Authorization: Bearer {probe.token.value}\n")
        fd = os.open(input_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        tail: list[str] = []
        try:
            proc = subprocess.Popen(
                self.aria2c_argv(input_file, entry),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                pass_fds=(lock_fd,),  # aria2c holds the destination lock while it lives
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if not line:
                    continue
                tail = [*tail[-4:], line]
                if self.settings.progress:
                    self.log(f"  {entry.dest}: {line}")
            status = proc.wait()
        finally:
            shutil.rmtree(private, ignore_errors=True)
        return status, tail

    def verify_file(self, entry: manifests.ModelEntry, path: Path, expected: int | None) -> str:
        """Size, content and sha256 of ``path``; returns the sha256 or raises DownloadError."""
        size = path.stat().st_size
        if expected is not None and size != expected:
            raise DownloadError(f"got {size} bytes, expected {expected}")
        problem = content_problem(path, entry.name)
        if problem:
            raise DownloadError(problem)
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
            digest = self.verify_file(entry, dest, entry.size)
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
        entry, dest, s = job.entry, job.dest, self.settings
        part = part_path(dest)
        started = time.monotonic()
        start_bytes = part.stat().st_size if part.exists() else 0
        for attempt in range(1, s.max_tries + 1):
            probe = job.probe
            if probe is None or time.monotonic() - probe.at > 300:
                probe = self.probe(entry)
            job.probe = None
            expected = entry.size if entry.size is not None else probe.size
            if not probe.ranges and part.exists():
                # No Range support: a .part cannot resume (and aria2c 1.36 aborts on it).
                self.log(f"  {entry.dest}: server cannot resume; starting over")
                remove_partial(dest)
            self.reserve_space(part, expected)
            try:
                status, tail = self.run_aria2c(entry, probe, part, lock_fd)
            finally:
                self.release_space(part)
            if status == 0:
                break
            if status < 0:
                meaning, retry, remove = f"aria2c died of signal {-status}", True, True
            else:
                meaning, retry, remove = ARIA2_EXIT.get(
                    status, ("unknown exit status", True, False)
                )
            if remove:
                remove_partial(dest)
            detail = f" ({tail[-1]})" if tail else ""
            if not retry or attempt == s.max_tries:
                raise DownloadError(
                    f"aria2c exit {status}: {meaning}{detail}", auth_needed=status == 24
                )
            wait = min(s.retry_wait * 2 ** (attempt - 1), s.max_wait)
            self.log(f"  {entry.dest}: aria2c exit {status}: {meaning}; retry in {wait:g}s")
            time.sleep(wait)
        try:
            digest = self.verify_file(entry, part, expected)
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
    probe: Probe | None = None


def plan(entries: Sequence[manifests.ModelEntry], models_dir: Path) -> list[Job]:
    jobs = []
    for entry in entries:
        job = Job(entry, models_dir / entry.folder / entry.name)
        if is_present(entry, job.dest):
            job.status = "present"
        jobs.append(job)
    return jobs


def check_batch_space(downloader: Downloader, jobs: Sequence[Job]) -> str | None:
    """Sum what the batch still needs per volume; a message when it does not fit."""
    need: dict[int, tuple[int, Path]] = {}
    unknown = []
    for job in jobs:
        size = job.entry.size if job.entry.size is not None else job.probe and job.probe.size
        if size is None:
            unknown.append(job.entry.dest)
            continue
        part = part_path(job.dest)
        have = part.stat().st_size if part.exists() else 0
        dev = os.stat(job.dest.parent).st_dev
        total, _ = need.get(dev, (0, job.dest.parent))
        need[dev] = (total + max(0, size - have), job.dest.parent)
    if unknown:
        downloader.log(f"size unknown (no size= and no Content-Length): {', '.join(unknown)}")
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
            log(f"{state:<28} {job.entry.dest}  <- {job.entry.url}")
        return EXIT_OK
    downloader = Downloader(settings, env, log)
    if todo and shutil.which(settings.aria2c) is None:
        raise UsageError(f"aria2c not found ('{settings.aria2c}'); install aria2")
    log(f"{len(jobs) - len(todo)} present, {len(todo)} to download into {settings.models_dir}")
    for job in todo:
        job.dest.parent.mkdir(parents=True, exist_ok=True)

    def probe_size(job: Job) -> None:
        if job.entry.size is None:
            try:
                job.probe = downloader.probe(job.entry)
            except DownloadError as err:
                fail(job, err)

    def fail(job: Job, err: DownloadError) -> None:
        job.status, job.note, job.auth_needed = "failed", str(err), err.auth_needed
        log(f"[failed] {job.entry.dest}: {err}")

    with ThreadPoolExecutor(max_workers=max(1, settings.jobs)) as pool:
        list(pool.map(probe_size, todo))
    todo = [job for job in todo if job.status == "pending"]
    short = check_batch_space(downloader, todo) if todo else None
    if short:
        log(f"[failed] {short}")
        for job in todo:
            job.status, job.note = "failed", "not enough free space for the batch"
        todo = []

    def work(job: Job) -> None:
        try:
            downloader.download(job)
        except DownloadError as err:
            fail(job, err)
            return
        except OSError as err:
            fail(job, DownloadError(f"{err.strerror or err}: {err.filename or ''}"))
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--manifest", action="append", required=True, help="models manifest (repeatable)")
    add("--models-dir", default=DEFAULT_MODELS_DIR, help="default: %(default)s")
    add("--jobs", type=int, default=DEFAULT_JOBS, help="files at a time (default 3)")
    add("--dry-run", action="store_true", help="print what would happen; no network, no writes")
    add("--progress", action="store_true", help="show aria2c's own progress every 10 s")
    add("--max-tries", type=int, default=5, help="tries per request and per file")
    add("--retry-wait", type=float, default=3.0, help="first backoff in seconds (doubles)")
    add("--max-wait", type=float, default=300.0, help="longest wait, Retry-After included")
    add("--timeout", type=int, default=60, help="aria2c --timeout and probe timeout, seconds")
    add("--connect-timeout", type=int, default=30)
    add("--connections", type=int, default=4, help="aria2c connections per file")
    add("--reserve-mib", type=int, default=100, help="MiB to leave free on the volume")
    add("--aria2c", default=os.environ.get("AICLIPSE_ARIA2C", "aria2c"), help="aria2c binary")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.max_tries < 1 or args.connections < 1 or args.retry_wait <= 0:
        parser.error("--jobs, --max-tries, --connections must be >= 1 and --retry-wait > 0")
    return args


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    log = Log(Masker([env.get(var, "") for var in TOKEN_VARS]))
    args = parse_args(argv)
    try:
        rules = token_rules(env)
        log.mask = Masker([env.get(var, "") for var in {*TOKEN_VARS, *(r.var for r in rules)}])
        entries = manifests.merge_models(*(manifests.load_models(p) for p in args.manifest))
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
        connections=args.connections,
        reserve=args.reserve_mib * 1024 * 1024,
        progress=args.progress,
        aria2c=args.aria2c,
    )
    try:
        return run(entries, settings, log, env)
    except UsageError as err:
        log(f"error: {err}")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
