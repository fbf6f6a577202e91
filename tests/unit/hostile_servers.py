"""HTTP servers on loopback for the download tests: honest ones and hostile ones.

Each ``Server`` listens on one loopback address (127.0.0.1, 127.0.0.2, ... are different
hosts to the client) and logs every request with its host and Authorization header, so a
test can say which host saw a token. A ``Route`` says what one path answers; ``hook`` lets a
test answer one request its own way (a redirect only for the full GET, a 503 only for
aria2c, ...).
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# (status, headers, body) a hook answers instead of the route, or None to let the route answer.
Answer = tuple[int, dict[str, str], bytes]
PROBE_RANGE = "bytes=0-1023"  # what download_models.py's probe asks for


def safetensors_bytes(n_floats: int) -> bytes:
    header = {
        "__metadata__": {"format": "pt"},
        "w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + os.urandom(4 * n_floats)


class Route:
    """What one path answers: a body, statuses to answer first, a redirect, auth, speed."""

    def __init__(
        self,
        body: bytes = b"",
        *,
        first: tuple[int, ...] = (),
        retry_after: str | None = None,
        redirect: str | None = None,
        content_type: str = "application/octet-stream",
        need_auth: str | None = None,
        delay: float = 0.0,
        step: int = 16384,
        ranges: bool = True,
        length: bool = True,
        status_body: bytes = b"",
        hook: Callable[[dict], Answer | None] | None = None,
    ):
        self.body = body
        self.first = list(first)
        self.retry_after = retry_after
        self.redirect = redirect
        self.content_type = content_type
        self.need_auth = need_auth
        self.delay = delay  # seconds after each ``step`` bytes of the body
        self.step = step
        self.ranges = ranges
        self.length = length
        self.status_body = status_body
        self.hook = hook


class Server:
    def __init__(self, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None):
        """``tls``: (certificate, key) files: the server speaks https."""
        self.host = host
        self.routes: dict[str, Route] = {}
        self.requests: list[dict] = []
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()
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
                path = self.path.split("?")[0]
                request = {
                    "host": server.host,
                    "path": path,
                    "method": self.command,
                    "headers": dict(self.headers),
                    "auth": self.headers.get("Authorization"),
                    "range": self.headers.get("Range"),
                    "agent": self.headers.get("User-Agent", ""),
                }
                with server.lock:
                    server.requests.append(request)
                route = server.routes.get(path)
                if route is None:
                    return self.simple(404, b"not found")
                answer = route.hook(request) if route.hook else None
                if answer is not None:
                    status, headers, body = answer
                    return self.simple(status, body, headers)
                with server.lock:
                    status = route.first.pop(0) if route.first else None
                if status is not None:
                    extra = {"Retry-After": route.retry_after} if route.retry_after else {}
                    return self.simple(status, route.status_body or b"try later", extra)
                if route.redirect:
                    return self.simple(307, b"", {"Location": route.redirect})
                if route.need_auth and self.headers.get("Authorization") != route.need_auth:
                    return self.simple(401, route.status_body or b'{"error": "unauthorized"}')
                body, start = route.body, 0
                rng = self.headers.get("Range")
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
                if route.ranges and match:
                    start = int(match.group(1))
                    end = int(match.group(2)) if match.group(2) else len(body) - 1
                    end = min(end, len(body) - 1)
                    if start >= len(body):
                        return self.simple(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
                    chunk = body[start : end + 1]
                else:
                    self.send_response(200)
                    chunk = body
                self.send_header("Content-Type", route.content_type)
                if route.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                if route.length:
                    self.send_header("Content-Length", str(len(chunk)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if head:
                    return
                step = route.step
                for offset in range(0, len(chunk), step):
                    piece = chunk[offset : offset + step]
                    try:
                        self.wfile.write(piece)
                        self.wfile.flush()
                    except OSError:
                        return
                    with server.lock:
                        server.sent[path] = server.sent.get(path, 0) + len(piece)
                    if route.delay:
                        time.sleep(route.delay)

            def simple(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.base + path

    def aria2_gets(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path and r["agent"].startswith("aiclipse")]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed(folder: Path, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for ``ip`` (and its key), made with the openssl CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", f"/CN={ip}", "-addext",
         f"subjectAltName=IP:{ip}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class Listener:
    """A bare TCP port that counts connections (the target of a redirect to ftp:// etc.)."""

    def __init__(self, host: str = "127.0.0.2"):
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join()
        self.sock.close()


def descendants(root: int) -> list[int]:
    """The processes below ``root`` (its children, theirs, ...), from /proc."""
    parents: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parents[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        parent = todo.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        todo += kids
    return found
