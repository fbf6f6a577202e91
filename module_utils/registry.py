"""A small client for the Docker Registry HTTP API v2 (distribution spec).

Used by the plan (does this hash tag exist?), os_base and, later, push and retention. Stdlib
only. Handles plain HTTP for loopback and configured insecure registries, Basic auth and the
Bearer token challenge that ghcr.io and Docker Hub answer with.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
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


@dataclass(frozen=True)
class ImageRef:
    registry: str
    repository: str
    reference: str  # a tag or sha256:<hex>

    def __str__(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.registry}/{self.repository}{sep}{self.reference}"


_REF = re.compile(
    r"^(?P<registry>[^/]+)/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def parse_ref(ref: str) -> ImageRef:
    """Split ``host[:port]/repo[:tag][@digest]``; the registry host must be explicit."""
    m = _REF.match(ref)
    if not m or not ("." in m["registry"] or ":" in m["registry"] or m["registry"] == "localhost"):
        raise RegistryError(
            f"{ref!r} is not a fully qualified image reference; "
            "write it as host[:port]/repository[:tag] (e.g. 127.0.0.1:5000/aiclipse/os-base:tag)"
        )
    return ImageRef(m["registry"], m["repo"], m["digest"] or m["tag"] or "latest")


def is_plain_http(registry: str, insecure: tuple[str, ...] = ()) -> bool:
    """Loopback registries and those listed as insecure speak plain HTTP."""
    if registry in insecure:
        return True
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
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

    def _request(self, method: str, path: str, scope: str, headers: dict[str, str]):
        url = self.base + path
        hdrs = dict(headers)
        if scope in self._tokens:
            hdrs["Authorization"] = self._tokens[scope]
        req = urllib.request.Request(url, method=method, headers=hdrs)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            if err.code == 401 and scope not in self._tokens:
                self._tokens[scope] = self._authorize(err.headers.get("WWW-Authenticate", ""))
                return self._request(method, path, scope, headers)
            raise
        except (urllib.error.URLError, OSError) as err:
            raise RegistryError(
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
        query = {k: v for k, v in fields.items() if k in ("service", "scope")}
        url = fields.get("realm", "") + "?" + urllib.parse.urlencode(query)
        req = urllib.request.Request(url)
        if self.creds.username:
            req.add_header("Authorization", self.creds.basic())
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            raise self._denied() from err
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
        try:
            with self._request(
                "HEAD", f"/v2/{repository}/manifests/{reference}", scope, {"Accept": MANIFEST_TYPES}
            ) as resp:
                return resp.headers.get("Docker-Content-Digest")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            if err.code in (401, 403):
                raise self._denied() from err
            raise RegistryError(
                f"registry {self.registry} answered {err.code} for {repository}:{reference}"
            ) from err
