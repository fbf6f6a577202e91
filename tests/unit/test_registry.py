"""module_utils/registry.py: image references and the registry v2 client against a real server."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible.module_utils.registry import (
    MANIFEST_TYPES,
    Credentials,
    DeleteUnsupported,
    ImageRef,
    Registry,
    RegistryError,
    Writer,
    is_plain_http,
    next_link,
    parse_ref,
)

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "0123456789abcdef" * 4

# ---------------------------------------------------------------------------------- parse_ref


@pytest.mark.parametrize(
    ("ref", "registry", "repository", "reference"),
    [
        ("127.0.0.1:5000/aiclipse/os-base:tag", "127.0.0.1:5000", "aiclipse/os-base", "tag"),
        ("localhost/app", "localhost", "app", "latest"),
        ("localhost:5000/app:v1.2.3", "localhost:5000", "app", "v1.2.3"),
        (
            "ghcr.io/org/team/sub/image:2024_10-rc.1",
            "ghcr.io",
            "org/team/sub/image",
            "2024_10-rc.1",
        ),
        ("registry.example.com/a.b_c__d--e/f", "registry.example.com", "a.b_c__d--e/f", "latest"),
        (f"ghcr.io/org/image@{DIGEST}", "ghcr.io", "org/image", DIGEST),
        (f"ghcr.io/org/image:tag@{DIGEST}", "ghcr.io", "org/image", DIGEST),
        (f"10.0.0.5:443/x@{OTHER}", "10.0.0.5:443", "x", OTHER),
        ("[::1]:5000/aiclipse/os-base:Tag_1", "[::1]:5000", "aiclipse/os-base", "Tag_1"),
        ("ghcr.io/org/image:" + "t" * 128, "ghcr.io", "org/image", "t" * 128),
    ],
)
def test_parse_ref_valid(ref: str, registry: str, repository: str, reference: str) -> None:
    assert parse_ref(ref) == ImageRef(registry, repository, reference)


def test_image_ref_str_round_trips() -> None:
    for ref in ("127.0.0.1:5000/aiclipse/os-base:tag", f"ghcr.io/org/image@{DIGEST}"):
        assert str(parse_ref(ref)) == ref
    assert str(parse_ref("localhost/app")) == "localhost/app:latest"


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("aiclipse/os-base:tag", "registry host"),
        ("os-base:tag", "registry host"),
        ("os-base", "registry host"),
        ("/os-base", "registry host"),
        ("", "registry host"),
        ("ghcr.io/", "repository"),
        ("ghcr.io/Org/Image:tag", "lowercase"),
        ("127.0.0.1:5000/aiclipse/OS-base", "lowercase"),
        ("ghcr.io/org//image", "repository"),
        ("ghcr.io/org/image-:tag", "repository"),
        ("ghcr.io/org/image:-bad", "tag"),
        ("ghcr.io/org/image:.bad", "tag"),
        ("ghcr.io/org/image:ba d", "tag"),
        ("ghcr.io/org/image:t\u00e9", "tag"),
        ("ghcr.io/org/image:" + "t" * 129, "tag"),
        ("ghcr.io/org/image:", "tag"),
        ("ghcr.io/org/image:tag\n", "tag"),
        ("ghcr.io/org/image@sha256:abc", "digest"),
        ("ghcr.io/org/image@md5:" + "a" * 32, "digest"),
        ("ghcr.io/org/image@sha256:" + "AB" * 32, "digest"),
    ],
)
def test_parse_ref_invalid_says_how_to_write_it(ref: str, says: str) -> None:
    with pytest.raises(RegistryError) as err:
        parse_ref(ref)
    msg = str(err.value)
    assert repr(ref) in msg
    assert says in msg
    assert "host[:port]/repository[:tag]" in msg
    assert "127.0.0.1:5000/aiclipse/os-base:tag" in msg


# ------------------------------------------------------------------------------ is_plain_http


@pytest.mark.parametrize(
    "registry",
    [
        "127.0.0.1",
        "127.0.0.1:5000",
        "127.1.2.3:5000",
        "[::1]",
        "[::1]:5000",
        "localhost",
        "localhost:5000",
        "LOCALHOST:5000",
    ],
)
def test_is_plain_http_loopback(registry: str) -> None:
    assert is_plain_http(registry) is True


@pytest.mark.parametrize(
    "registry", ["ghcr.io", "registry-1.docker.io", "10.0.0.5:5000", "[2001:db8::1]:5000"]
)
def test_is_plain_http_other_hosts_use_tls(registry: str) -> None:
    assert is_plain_http(registry) is False


def test_is_plain_http_listed_insecure() -> None:
    insecure = ("10.0.0.5:5000", "registry.lan")
    assert is_plain_http("10.0.0.5:5000", insecure) is True
    assert is_plain_http("registry.lan", insecure) is True
    assert is_plain_http("ghcr.io", insecure) is False


def test_registry_base_url_scheme() -> None:
    assert Registry("127.0.0.1:5000").base == "http://127.0.0.1:5000"
    assert Registry("[::1]:5000").base == "http://[::1]:5000"
    assert Registry("ghcr.io").base == "https://ghcr.io"
    assert Registry("reg.lan:5000", insecure=("reg.lan:5000",)).base == "http://reg.lan:5000"


# ------------------------------------------------------------------------- a real registry


@dataclass
class FakeRegistry:
    """What the test server serves and what it saw."""

    auth: str = "none"  # none | basic | bearer
    user: str = "farm"
    password: str = "s3cret"
    token: str = "tok-123"
    manifests: dict[str, str] = field(default_factory=dict)  # "repo:ref" -> digest
    status: int | None = None  # answer every manifest request with this status
    send_digest: bool = True
    body: bytes = b'{"schemaVersion": 2}'
    port: int = 0
    realm: str = ""  # the Bearer realm to advertise; default: this server's /token
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def seen(self, method: str, prefix: str = "/v2/") -> list[dict[str, str]]:
        return [h for m, p, h in self.requests if m == method and p.startswith(prefix)]


def _handler(state: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    basic = "Basic " + base64.b64encode(f"{state.user}:{state.password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _reply(self, code: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _authorized(self) -> bool:
            got = self.headers.get("Authorization", "")
            if state.auth == "basic":
                if got == basic:
                    return True
                self._reply(401, {"WWW-Authenticate": 'Basic realm="fake registry"'})
                return False
            if state.auth == "bearer":
                if got == f"Bearer {state.token}":
                    return True
                realm = state.realm or f"http://{state.address}/token"
                challenge = f'Bearer realm="{realm}",service="x",scope="repository:r:pull"'
                self._reply(401, {"WWW-Authenticate": challenge})
                return False
            return True

        def _token(self) -> None:
            if self.headers.get("Authorization", "") != basic:
                self._reply(401, {"WWW-Authenticate": 'Basic realm="token"'})
                return
            body = json.dumps({"token": state.token}).encode()
            self._reply(200, {"Content-Type": "application/json"}, body)

        def _manifest(self) -> None:
            state.requests.append((self.command, self.path, dict(self.headers.items())))
            if self.path.startswith("/token"):
                self._token()
                return
            if not self.path.startswith("/v2/") or "/manifests/" not in self.path:
                self._reply(404, {})
                return
            if not self._authorized():
                return
            if state.status is not None:
                self._reply(state.status, {})
                return
            repo, _, ref = self.path[len("/v2/") :].partition("/manifests/")
            digest = state.manifests.get(f"{repo}:{ref}")
            if digest is None:
                self._reply(404, {"Content-Type": "application/json"}, b'{"errors": []}')
                return
            headers = {"Content-Type": "application/vnd.oci.image.index.v1+json"}
            if state.send_digest:
                headers["Docker-Content-Digest"] = digest
            self._reply(200, headers, state.body)

        do_HEAD = _manifest
        do_GET = _manifest
        do_DELETE = _manifest

    return Handler


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    state = FakeRegistry(manifests={"aiclipse/os-base:tag": DIGEST, f"r:{DIGEST}": DIGEST})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_manifest_digest_found(registry: FakeRegistry) -> None:
    reg = Registry(registry.address, timeout=5)
    assert reg.manifest_digest("aiclipse/os-base", "tag") == DIGEST
    [(method, path, _)] = registry.requests
    assert (method, path) == ("HEAD", "/v2/aiclipse/os-base/manifests/tag")


def test_manifest_digest_by_digest(registry: FakeRegistry) -> None:
    assert Registry(registry.address, timeout=5).manifest_digest("r", DIGEST) == DIGEST


def test_manifest_digest_missing_is_none(registry: FakeRegistry) -> None:
    reg = Registry(registry.address, timeout=5)
    assert reg.manifest_digest("aiclipse/os-base", "nope") is None
    assert reg.manifest_digest("nobody/here", "tag") is None


def test_manifest_digest_accept_header_names_oci_and_docker_types(
    registry: FakeRegistry,
) -> None:
    Registry(registry.address, timeout=5).manifest_digest("aiclipse/os-base", "tag")
    [headers] = registry.seen("HEAD")
    accepted = {t.strip() for t in headers["Accept"].split(",")}
    assert "application/vnd.oci.image.index.v1+json" in accepted
    assert "application/vnd.oci.image.manifest.v1+json" in accepted
    assert "application/vnd.docker.distribution.manifest.list.v2+json" in accepted
    assert "application/vnd.docker.distribution.manifest.v2+json" in accepted
    assert headers["Accept"] == MANIFEST_TYPES
    assert "Authorization" not in headers


def test_manifest_digest_without_header_hashes_the_manifest(registry: FakeRegistry) -> None:
    registry.send_digest = False
    digest = Registry(registry.address, timeout=5).manifest_digest("aiclipse/os-base", "tag")
    assert digest == "sha256:" + hashlib.sha256(registry.body).hexdigest()
    assert [m for m, _, _ in registry.requests] == ["HEAD", "GET"]
    assert registry.seen("GET")[0]["Accept"] == MANIFEST_TYPES


def test_manifest_digest_basic_auth(registry: FakeRegistry) -> None:
    registry.auth = "basic"
    reg = Registry(registry.address, Credentials("farm", "s3cret"), timeout=5)
    assert reg.manifest_digest("aiclipse/os-base", "tag") == DIGEST
    first, second = registry.seen("HEAD")
    assert "Authorization" not in first
    assert second["Authorization"] == Credentials("farm", "s3cret").basic()
    # The credentials are remembered for the scope: the next request goes straight through.
    assert reg.manifest_digest("aiclipse/os-base", "nope") is None
    assert len(registry.seen("HEAD")) == 3


@pytest.mark.parametrize("creds", [Credentials("farm", "wrong"), Credentials()])
def test_manifest_digest_basic_auth_refused(registry: FakeRegistry, creds: Credentials) -> None:
    registry.auth = "basic"
    with pytest.raises(RegistryError, match="AICLIPSE_REGISTRY_USERNAME"):
        Registry(registry.address, creds, timeout=5).manifest_digest("aiclipse/os-base", "tag")


def test_manifest_digest_bearer_token(registry: FakeRegistry) -> None:
    registry.auth = "bearer"
    reg = Registry(registry.address, Credentials("farm", "s3cret"), timeout=5)
    assert reg.manifest_digest("aiclipse/os-base", "tag") == DIGEST
    methods = [(m, p.partition("?")[0]) for m, p, _ in registry.requests]
    assert methods == [
        ("HEAD", "/v2/aiclipse/os-base/manifests/tag"),
        ("GET", "/token"),
        ("HEAD", "/v2/aiclipse/os-base/manifests/tag"),
    ]
    token_path = registry.requests[1][1]
    assert "service=x" in token_path
    assert "scope=repository%3Ar%3Apull" in token_path
    assert (
        registry.seen("GET", "/token")[0]["Authorization"] == Credentials("farm", "s3cret").basic()
    )
    assert registry.seen("HEAD")[1]["Authorization"] == "Bearer tok-123"
    assert registry.seen("HEAD")[1]["Accept"] == MANIFEST_TYPES
    # The token is reused for the same scope.
    assert reg.manifest_digest("aiclipse/os-base", "nope") is None
    assert len(registry.seen("GET", "/token")) == 1


@pytest.mark.parametrize("creds", [Credentials("farm", "wrong"), Credentials()])
def test_manifest_digest_bearer_token_refused(registry: FakeRegistry, creds: Credentials) -> None:
    registry.auth = "bearer"
    with pytest.raises(RegistryError, match="AICLIPSE_REGISTRY_USERNAME") as err:
        Registry(registry.address, creds, timeout=5).manifest_digest("aiclipse/os-base", "tag")
    assert registry.address in str(err.value)


def test_manifest_digest_bearer_token_not_accepted(registry: FakeRegistry) -> None:
    """The token service hands out a token the registry then rejects."""
    registry.auth = "bearer"
    reg = Registry(registry.address, Credentials("farm", "s3cret"), timeout=5)
    reg._tokens["repository:aiclipse/os-base:pull"] = "Bearer stale"
    with pytest.raises(RegistryError, match="AICLIPSE_REGISTRY_USERNAME"):
        reg.manifest_digest("aiclipse/os-base", "tag")


def test_manifest_digest_server_error_names_status(registry: FakeRegistry) -> None:
    registry.status = 500
    with pytest.raises(RegistryError, match="500") as err:
        Registry(registry.address, timeout=5).manifest_digest("aiclipse/os-base", "tag")
    assert "aiclipse/os-base:tag" in str(err.value)
    assert registry.address in str(err.value)


def test_manifest_digest_forbidden_is_a_credentials_problem(registry: FakeRegistry) -> None:
    registry.status = 403
    with pytest.raises(RegistryError, match="AICLIPSE_REGISTRY_USERNAME"):
        Registry(registry.address, timeout=5).manifest_digest("aiclipse/os-base", "tag")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_manifest_digest_unreachable() -> None:
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(RegistryError, match="unreachable") as err:
        Registry(address, timeout=5).manifest_digest("aiclipse/os-base", "tag")
    assert address in str(err.value)


def test_manifest_digest_token_service_unreachable(registry: FakeRegistry) -> None:
    """A Bearer challenge whose realm points at a dead port is reported, not a raw URLError."""
    registry.auth = "bearer"
    registry.realm = f"http://127.0.0.1:{_free_port()}/token"
    reg = Registry(registry.address, Credentials("farm", "s3cret"), timeout=5)
    with pytest.raises(RegistryError, match="unreachable") as err:
        reg.manifest_digest("r", DIGEST)
    assert "token service" in str(err.value)
    assert registry.realm in str(err.value)


def test_manifest_digest_bearer_realm_with_query(registry: FakeRegistry) -> None:
    registry.auth = "bearer"
    registry.realm = f"http://{registry.address}/token?account=farm"
    reg = Registry(registry.address, Credentials("farm", "s3cret"), timeout=5)
    assert reg.manifest_digest("aiclipse/os-base", "tag") == DIGEST
    [(_, path, _)] = [r for r in registry.requests if r[1].startswith("/token")]
    assert path.startswith("/token?account=farm&")
    assert "service=x" in path


def test_a_registry_without_deletes_says_so_and_how_to_prune_instead(registry: FakeRegistry):
    registry.status = 405  # GHCR, or distribution with storage.delete disabled
    writer = Writer(registry.address, timeout=5, attempts=1)
    with pytest.raises(DeleteUnsupported, match=r"does not allow deleting r@sha256:ab.*keep: 0"):
        writer.delete_manifest("r", DIGEST)


@pytest.mark.parametrize(
    ("header", "target"),
    [
        ('</v2/r/tags/list?last=b&n=2>; rel="next"', "/v2/r/tags/list?last=b&n=2"),
        (
            "<https://ghcr.io/v2/o/r/tags/list?last=x>; rel=next",
            "https://ghcr.io/v2/o/r/tags/list?last=x",
        ),
        (
            '</v2/r/tags/list?last=a>; rel="prev", </v2/r/tags/list?last=c>; rel="next"',
            "/v2/r/tags/list?last=c",
        ),
        ('</v2/r/tags/list?last=a>; rel="prev"', ""),
        ("", ""),
    ],
)
def test_next_link_finds_the_next_page(header: str, target: str) -> None:
    assert next_link(header) == target
