"""Shared by the runtime container tests and bench/runtime.py: the test image, a model server.

* ``build_image(tag, workdir)``: serves the fake ComfyUI (tests/fixtures/comfyui) from a git
  daemon on 127.0.0.1 and builds tests/docker/runtime/Dockerfile with the current runtime
  scripts (``docker build --network host``, the host CA bundle as a BuildKit secret).
* ``ModelServer``: a threaded HTTP server on 127.0.0.x with Range support that counts the
  bytes it sends (a warm start must send none) and can throttle each connection.
* small docker helpers that never raise on cleanup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
sys.path.insert(0, str(REPO / "tests"))

from gitserver import GitServer, make_repo  # noqa: E402

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BASE_IMAGE = os.environ.get(
    "AICLIPSE_OS_BASE", "127.0.0.1:5000/aiclipse/os-base:bookworm-efc5f41706ba"
)
RUNTIME_FILES = ("start.sh", "download_models.py", "install_nodes.py", "aiclipse_config.py")


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} ... exited {done.returncode}:\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")  # fmt: skip
    return done


def build_context(dest: Path) -> Path:
    """The build context: Dockerfile, workflows, an empty manifest, the runtime scripts."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "Dockerfile", dest / "Dockerfile")
    shutil.copytree(HERE / "workflows", dest / "workflows")
    (dest / "manifests").mkdir()
    (dest / "manifests" / "models_manifest.txt").write_text(
        "# the test image ships no models; tests mount their own manifest over /manifests\n"
    )
    (dest / "manager-config.ini").write_text("[default]\nsecurity_level = normal\n")
    runtime = dest / "runtime"
    runtime.mkdir()
    for name in RUNTIME_FILES:
        shutil.copy2(REPO / "runtime" / name, runtime / name)
    shutil.copy2(REPO / "module_utils" / "manifests.py", runtime / "manifests.py")
    return dest


def build_image(tag: str, workdir: Path, base: str = BASE_IMAGE) -> dict[str, str]:
    """Build the runtime test image on ``base`` (an OS base image the engine has or can
    pull); returns {'tag', 'comfy_commit', 'seconds'}."""
    repos = workdir / "repos"
    repos.mkdir(parents=True, exist_ok=True)
    _, commit = make_repo(REPO / "tests" / "fixtures" / "comfyui", repos / "ComfyUI")
    context = build_context(workdir / "context")
    started = time.monotonic()
    with GitServer(repos) as git:
        env = dict(os.environ, DOCKER_BUILDKIT="1")
        done = subprocess.run(
            [
                "docker",
                "build",
                "--network",
                "host",
                "--progress",
                "plain",
                "--secret",
                f"id=ca,src={CA_BUNDLE}",
                "--build-arg",
                f"BASE_IMAGE={base}",
                "--build-arg",
                f"COMFY_REPO={git.url('ComfyUI')}",
                "--build-arg",
                f"COMFY_COMMIT={commit}",
                "-t",
                tag,
                str(context),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=1200,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"docker build failed:\n{done.stderr[-6000:]}")
    return {"tag": tag, "comfy_commit": commit, "seconds": f"{time.monotonic() - started:.1f}"}


def remove_image(tag: str) -> None:
    docker("rmi", "-f", tag, check=False)


def remove_container(name: str) -> None:
    docker("rm", "-f", "-v", name, check=False)


def remove_volume(name: str) -> None:
    docker("volume", "rm", "-f", name, check=False)


def http_get(url: str, timeout: float = 5, headers: dict | None = None):
    """(status, headers, body) without raising on HTTP errors; no redirect following."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        body = err.read() if err.fp else b""
        return err.code, err.headers, body


def wait_http(
    url: str, timeout: float, container: str | None = None, headers: dict | None = None
) -> float:
    """Poll ``url`` until it answers 2xx; return the monotonic time it did. Fails with logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _, _ = http_get(url, timeout=2, headers=headers)
            if 200 <= status < 300:
                return time.monotonic()
        except OSError:
            pass
        if container and not running(container):
            break
        time.sleep(0.05)
    logs = docker("logs", container, check=False) if container else None
    detail = f"\n--- logs ---\n{logs.stdout}{logs.stderr}" if logs else ""
    raise AssertionError(f"{url} did not answer within {timeout}s{detail}")


def running(container: str) -> bool:
    done = docker("inspect", "-f", "{{.State.Running}}", container, check=False)
    return done.stdout.strip() == "true"


def logs(container: str) -> str:
    done = docker("logs", container, check=False)
    return done.stdout + done.stderr


def wait_log(container: str, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = logs(container)
        if re.search(pattern, text):
            return text
        if not running(container):
            break
        time.sleep(0.1)
    raise AssertionError(f"no /{pattern}/ in the logs of {container} within {timeout}s:\n{text}")


# --------------------------------------------------------------------------------------------
# Model server


class ModelServer:
    """Serves ``files`` {path: bytes} on host:port with Range; counts bytes sent per path.

    ``rate`` (bytes/s) throttles each connection on its own, like a link that gives every TCP
    stream the same share.
    """

    def __init__(self, files: dict[str, bytes], host: str = "127.0.0.1", rate: float = 0):
        self.files = files
        self.rate = rate
        self.sent: dict[str, int] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(head=True)

            def do_GET(self):
                self.answer(head=False)

            def answer(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.requests.append((self.command, self.path, dict(self.headers)))
                body = server.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = 0, len(body) - 1
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if match:
                    start = int(match[1])
                    end = min(int(match[2]), end) if match[2] else end
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if head:
                    return
                server._send(self.wfile, path, body[start : end + 1])

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _send(self, out, path: str, data: bytes) -> None:
        chunk = 64 * 1024
        started = time.monotonic()
        done = 0
        try:
            for offset in range(0, len(data), chunk):
                piece = data[offset : offset + chunk]
                out.write(piece)
                done += len(piece)
                with self._lock:
                    self.sent[path] = self.sent.get(path, 0) + len(piece)
                if self.rate:
                    ahead = done / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    @property
    def total_sent(self) -> int:
        with self._lock:
            return sum(self.sent.values())

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def safetensors_bytes(n_floats: int, seed: int = 0) -> bytes:
    """A valid .safetensors file with one F32 tensor of ``n_floats`` values."""
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    data = hashlib.sha256(str(seed).encode()).digest() * (4 * n_floats // 32 + 1)
    return len(header).to_bytes(8, "little") + header + data[: 4 * n_floats]


def basic_auth(user: str, token: str) -> dict[str, str]:
    """The header the proxy in front of ComfyUI asks for."""
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


@contextlib.contextmanager
def container_cleanup(*names: str) -> Iterator[None]:
    try:
        yield
    finally:
        for name in names:
            remove_container(name)
