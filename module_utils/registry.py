"""A small client for the Docker Registry HTTP API v2 (distribution spec).

Used by the plan (does this hash tag exist?), os_base and, later, push and retention. Stdlib
only. Handles plain HTTP for loopback and configured insecure registries, Basic auth and the
Bearer token challenge that ghcr.io and Docker Hub answer with.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


class RegistryError(Exception):
    """A registry answered something we cannot use; the message names the fix."""


class DeleteUnsupported(RegistryError):
    """The registry does not delete manifests through its API (GHCR, deletes disabled)."""


class RegistryUnreachable(RegistryError):
    """No answer at all (connection refused, DNS, timeout): worth another try."""


@dataclass(frozen=True)
class ImageRef:
    registry: str
    repository: str
    reference: str  # a tag or sha256:<hex>

    def __str__(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.registry}/{self.repository}{sep}{self.reference}"


_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]+)?")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_EXAMPLE = "e.g. 127.0.0.1:5000/aiclipse/os-base:tag or ghcr.io/org/image@sha256:<64 hex>"


def parse_ref(ref: str) -> ImageRef:
    """Split ``host[:port]/repo[:tag][@digest]``; the registry host must be explicit."""

    def bad(why: str) -> RegistryError:
        return RegistryError(
            f"{ref!r} is not a valid image reference: {why}; write it as "
            f"host[:port]/repository[:tag][@sha256:digest] ({_EXAMPLE})"
        )

    registry, slash, rest = ref.partition("/")
    explicit = "." in registry or ":" in registry or registry == "localhost"
    if not slash or not explicit or not _HOST.fullmatch(registry):
        raise bad("it does not start with a registry host (host[:port]/)")
    rest, at, digest = rest.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise bad("the digest must be sha256: followed by 64 lowercase hex digits")
    repo, tag = rest, ""
    name, colon, maybe_tag = rest.rpartition(":")
    if colon and "/" not in maybe_tag:
        repo, tag = name, maybe_tag
        if not _TAG.fullmatch(tag):
            raise bad(
                "a tag is up to 128 characters of letters, digits, '_', '.' and '-', "
                "not starting with '.' or '-'"
            )
    if not _REPO.fullmatch(repo):
        raise bad(
            "the repository must be lowercase letters and digits, separated by '.', '_', "
            "'__', '-' or '/'"
        )
    return ImageRef(registry, repo, digest or tag or "latest")


def _host(registry: str) -> str:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> the bare host (lowercased)."""
    if registry.startswith("["):
        return registry[1:].partition("]")[0]
    if registry.count(":") == 1:
        return registry.rsplit(":", 1)[0].lower()
    return registry.lower()


def is_plain_http(registry: str, insecure: tuple[str, ...] = ()) -> bool:
    """Loopback registries and those listed as insecure speak plain HTTP."""
    if registry in insecure:
        return True
    host = _host(registry)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


class Registry:
    """One registry endpoint; remembers a bearer token per scope."""

    def __init__(
        self,
        registry: str,
        creds: Credentials | None = None,
        insecure: tuple[str, ...] = (),
        timeout: float = 10.0,
    ) -> None:
        scheme = "http" if is_plain_http(registry, insecure) else "https"
        self.registry = registry
        self.base = f"{scheme}://{registry}"
        self.creds = creds or Credentials()
        self.timeout = timeout
        self._tokens: dict[str, str] = {}

    def _request(
        self,
        method: str,
        path: str,
        scope: str,
        headers: dict[str, str],
        data: bytes | None = None,
    ):
        url = self.base + path
        hdrs = dict(headers)
        if scope in self._tokens:
            hdrs["Authorization"] = self._tokens[scope]
        req = urllib.request.Request(url, method=method, headers=hdrs, data=data)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            if err.code == 401 and scope not in self._tokens:
                self._tokens[scope] = self._authorize(err.headers.get("WWW-Authenticate", ""))
                return self._request(method, path, scope, headers, data)
            raise
        except (urllib.error.URLError, OSError) as err:
            raise RegistryUnreachable(
                f"registry {self.registry} is unreachable ({url}: {err}); check that it runs "
                "and the address in `registry` is right"
            ) from err

    def _authorize(self, challenge: str) -> str:
        kind, _, params = challenge.partition(" ")
        if kind.lower() == "basic":
            if not self.creds.username:
                raise self._denied()
            return self.creds.basic()
        if kind.lower() != "bearer":
            raise RegistryError(f"registry {self.registry} asks for unknown auth {challenge!r}")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise RegistryError(
                f"registry {self.registry} sent a Bearer challenge without a usable realm "
                f"({challenge!r})"
            )
        query = {k: v for k, v in fields.items() if k in ("service", "scope")}
        sep = "&" if "?" in realm else "?"
        url = realm + sep + urllib.parse.urlencode(query) if query else realm
        req = urllib.request.Request(url)
        if self.creds.username:
            req.add_header("Authorization", self.creds.basic())
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            raise self._denied() from err
        except (urllib.error.URLError, OSError) as err:
            raise RegistryError(
                f"the token service of registry {self.registry} is unreachable ({realm}: {err})"
            ) from err
        except ValueError as err:
            raise RegistryError(
                f"the token service of registry {self.registry} answered something that is "
                f"not JSON ({realm}: {err})"
            ) from err
        if not isinstance(body, dict):
            raise self._denied()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise self._denied()
        return "Bearer " + token

    def _denied(self) -> RegistryError:
        return RegistryError(
            f"registry {self.registry} refused the credentials; set AICLIPSE_REGISTRY_USERNAME "
            "and AICLIPSE_REGISTRY_PASSWORD (a token with read/write packages scope)"
        )

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest a tag or digest points at, or None when the registry has no such manifest."""
        scope = f"repository:{repository}:pull"
        path = f"/v2/{repository}/manifests/{reference}"
        sep = "@" if reference.startswith("sha256:") else ":"
        try:
            with self._request("HEAD", path, scope, {"Accept": MANIFEST_TYPES}) as resp:
                digest = resp.headers.get("Docker-Content-Digest")
            if digest:
                return digest
            # The header is optional in the distribution spec: hash the manifest itself.
            with self._request("GET", path, scope, {"Accept": MANIFEST_TYPES}) as resp:
                digest = resp.headers.get("Docker-Content-Digest")
                body = resp.read()
            return digest or "sha256:" + hashlib.sha256(body).hexdigest()
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            if err.code in (401, 403):
                raise self._denied() from err
            raise RegistryError(
                f"registry {self.registry} answered HTTP {err.code} for "
                f"{repository}{sep}{reference}"
            ) from err


# ---------------------------------------------------------------------------------------------
# Writing: move tags by manifest (REG-2), with retries on 5xx and 429 (REG-3)

RETRYABLE = (429, 500, 502, 503, 504)


def next_link(header: str) -> str:
    """The ``rel="next"`` target of a ``Link`` header (RFC 8288; several links, quoted or not)."""
    for part in header.split(","):
        match = re.search(r'<([^>]+)>\s*;.*\brel="?next"?(?:[\s;]|$)', part.strip())
        if match:
            return match.group(1)
    return ""


def retry_after(value: str | None, default: float, cap: float = 60.0) -> float:
    """Seconds to wait from a Retry-After header (seconds; an HTTP date counts as default)."""
    try:
        return min(max(float(value or ""), 0.0), cap)
    except ValueError:
        return default


class Writer(Registry):
    """A registry client that also reads and writes manifests, retrying what may pass."""

    def __init__(self, *args, attempts: int = 5, sleep=time.sleep, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attempts = attempts
        self.sleep = sleep
        self.waited: list[float] = []

    def _retrying(self, method: str, path: str, scope: str, headers, data=None):
        delay = 1.0
        for attempt in range(1, self.attempts + 1):
            try:
                return self._request(method, path, scope, headers, data)
            except urllib.error.HTTPError as err:
                if err.code in (401, 403):
                    raise self._denied() from err
                if err.code not in RETRYABLE or attempt == self.attempts:
                    raise RegistryError(
                        f"registry {self.registry} answered HTTP {err.code} to {method} {path}"
                        + (f" after {attempt} attempts" if attempt > 1 else "")
                    ) from err
                wait = retry_after(err.headers.get("Retry-After"), delay)
            except RegistryUnreachable:
                if attempt == self.attempts:
                    raise
                wait = delay
            self.waited.append(wait)
            self.sleep(wait)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def get_manifest(self, repository: str, reference: str) -> tuple[str, bytes, str]:
        """(media type, raw bytes, digest) of a manifest."""
        scope = f"repository:{repository}:pull"
        with self._retrying(
            "GET", f"/v2/{repository}/manifests/{reference}", scope, {"Accept": MANIFEST_TYPES}
        ) as resp:
            body = resp.read()
            media = resp.headers.get("Content-Type", "").split(";")[0]
            digest = resp.headers.get("Docker-Content-Digest") or (
                "sha256:" + hashlib.sha256(body).hexdigest()
            )
        return media, body, digest

    def get_blob(self, repository: str, digest: str) -> bytes:
        """A blob's bytes (an image config; layers are too big to read this way)."""
        scope = f"repository:{repository}:pull"
        with self._retrying("GET", f"/v2/{repository}/blobs/{digest}", scope, {}) as resp:
            return resp.read()

    def tags(self, repository: str) -> list[str]:
        """Every tag of ``repository`` (following the ``Link`` pages); none when it is absent."""
        scope = f"repository:{repository}:pull"
        path, names = f"/v2/{repository}/tags/list?n=1000", []
        while path:
            try:
                with self._retrying("GET", path, scope, {}) as resp:
                    names += json.load(resp).get("tags") or []
                    link = resp.headers.get("Link", "")
            except RegistryError as err:
                if "HTTP 404" in str(err):
                    return []
                raise
            path = next_link(link)
            if path.startswith(("http://", "https://")):
                path = "/" + path.split("/", 3)[3]
        return names

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete a manifest by digest: every tag pointing at it goes with it."""
        scope = f"repository:{repository}:pull,push,delete"
        try:
            with self._retrying("DELETE", f"/v2/{repository}/manifests/{digest}", scope, {}):
                pass
        except RegistryError as err:
            if "HTTP 405" in str(err) or "HTTP 400" in str(err):
                raise DeleteUnsupported(
                    f"registry {self.registry} does not allow deleting {repository}@{digest} "
                    f"({err}); enable deletes (docker-registry: storage.delete.enabled: true) "
                    "or the registry's own retention policy, and set nightly_retention_keep: 0"
                ) from err
            raise

    def put_manifest(self, repository: str, tag: str, media: str, body: bytes) -> str:
        scope = f"repository:{repository}:pull,push"
        with self._retrying(
            "PUT", f"/v2/{repository}/manifests/{tag}", scope, {"Content-Type": media}, body
        ) as resp:
            return resp.headers.get("Docker-Content-Digest", "")

    def retag(self, repository: str, digest: str, tags: list[str]) -> list[str]:
        """Point each tag at the manifest ``digest`` (no rebuild, no blob moves)."""
        media, body, got = self.get_manifest(repository, digest)
        if got != digest:
            raise RegistryError(
                f"registry {self.registry} returned manifest {got} for {repository}@{digest}"
            )
        moved = []
        for tag in tags:
            answer = self.put_manifest(repository, tag, media, body)
            if answer and answer != digest:
                raise RegistryError(f"{repository}:{tag} now points at {answer}, not {digest}")
            moved.append(tag)
        return moved
