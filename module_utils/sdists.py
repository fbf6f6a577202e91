"""Distributions that have no wheel for the target: locked by their sdist, built in the image.

The resolution accepts binary wheels only (``--only-binary=:all:`` for the target platform),
so pip answers ``Could not find a version that satisfies the requirement fairscale (from
versions: none)`` for a distribution published as an sdist alone (fairscale, fvcore, iopath,
dlib). For each such requirement ``probe`` asks pip, on the controller, for the sdist the
requirement picks (its URL, sha256 and metadata: pip prepares it in an isolated build
environment) and ``write_stub`` writes a metadata-only wheel of the same name and version,
so the ONE resolution of every layer places it and its dependencies like any wheel. The plan
then locks the sdist (``build: sdist``) by its hash; base-<gpu>'s Dockerfile builds it into
a wheel in a stage of its own with the compilers, and the layer installs that wheel.
Formats: docs/formats.md ("sdists").
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import tempfile
import urllib.parse
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# pip's words when no candidate fits (the requirement as pip writes it: name and specifier)
_NO_VERSION = re.compile(
    r"Could not find a version that satisfies the requirement (.+?) \(from versions: ([^)]*)\)"
)

_REQUIRED_BY = re.compile(r" \(from [^()]*\)$")


@dataclass(frozen=True)
class Sdist:
    """The sdist a requirement picks: what the lock pins and the build stage fetches."""

    name: str
    version: str
    url: str
    sha256: str
    requirement: str  # as pip asked for it (``iopath<0.1.10,>=0.1.7``)
    metadata: Mapping[str, Any]  # pip's report metadata (requires_dist, requires_python, ...)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sdist:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})


def missing_requirements(pip_output: str) -> list[tuple[str, str]]:
    """``(requirement, versions pip saw)`` for each requirement pip found no wheel for."""
    seen: dict[str, str] = {}
    for requirement, versions in _NO_VERSION.findall(pip_output):
        requirement = _REQUIRED_BY.sub("", requirement.strip())  # "x<2 (from fvcore)"
        seen.setdefault(requirement, versions.strip())
    return list(seen.items())


def _local_path(url: str) -> str | None:
    if not url.startswith("file://"):
        return None
    return urllib.parse.unquote(urllib.parse.urlparse(url).path)


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def probe(
    requirement: str,
    pip_command: Sequence[str],
    index_args: Sequence[str],
    constraints_file: str | None,
    env: Mapping[str, str],
    timeout_s: float,
) -> Sdist | None:
    """The sdist ``requirement`` picks, or None when there is none (a name no index knows, or a
    version that does not exist). pip prepares its metadata (``--no-binary`` for that name,
    ``--no-deps``: its dependencies join the one resolution later)."""
    name = canonicalize_name(Requirement(requirement).name)
    with tempfile.TemporaryDirectory(prefix="aiclipse-sdist-") as tmp:
        report = Path(tmp) / "report.json"
        args = [
            *pip_command, "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
            "--no-input", "--disable-pip-version-check", "--report", str(report),
            "--no-binary", name, *index_args,
        ]  # fmt: skip
        if constraints_file:
            args += ["--constraint", constraints_file]
        args.append(requirement)
        try:
            done = subprocess.run(
                args, capture_output=True, text=True, env=dict(env), timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0 or not report.is_file():
            return None
        items = json.loads(report.read_text("utf-8")).get("install") or []
    if len(items) != 1:
        return None
    item = items[0]
    info = item.get("download_info") or {}
    url = str(info.get("url", ""))
    archive = info.get("archive_info") or {}
    sha = (archive.get("hashes") or {}).get("sha256") or ""
    if not sha and isinstance(archive.get("hash"), str) and archive["hash"].startswith("sha256="):
        sha = archive["hash"][len("sha256=") :]
    local = _local_path(url)
    if not sha and local:
        sha = _sha256_of(local)
    if not sha or url.endswith(".whl"):
        return None
    metadata = item["metadata"]
    return Sdist(
        name=canonicalize_name(metadata["name"]),
        version=str(metadata["version"]),
        url=url,
        sha256=sha,
        requirement=requirement,
        metadata={
            key: metadata[key]
            for key in ("name", "version", "requires_dist", "requires_python", "provides_extra")
            if key in metadata
        },
    )


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def stub_name(sdist: Sdist) -> str:
    return f"{sdist.name.replace('-', '_')}-{sdist.version}-py3-none-any.whl"


def write_stub(folder: Path, sdist: Sdist) -> Path:
    """A wheel holding only the sdist's metadata, for the resolver (never installed)."""
    meta = sdist.metadata
    lines = ["Metadata-Version: 2.1", f"Name: {meta.get('name', sdist.name)}"]
    lines.append(f"Version: {sdist.version}")
    if meta.get("requires_python"):
        lines.append(f"Requires-Python: {meta['requires_python']}")
    lines += [f"Provides-Extra: {extra}" for extra in meta.get("provides_extra") or ()]
    lines += [f"Requires-Dist: {req}" for req in meta.get("requires_dist") or ()]
    info = f"{sdist.name.replace('-', '_')}-{sdist.version}.dist-info"
    contents = {
        f"{info}/METADATA": ("\n".join(lines) + "\n").encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: aiclipse-sdist-stub\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [_record_line(path, data) for path, data in contents.items()]
    contents[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / stub_name(sdist)
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in contents.items():
            archive.writestr(zipfile.ZipInfo(path, (1980, 1, 1, 0, 0, 0)), data)
    return wheel


def failure_message(
    unknown: Sequence[tuple[str, str]], specs: Sequence[str], target: str = ""
) -> str:
    """Every requirement with neither a wheel for the target nor an sdist, at once."""
    top = {canonicalize_name(Requirement(s).name) for s in specs}
    parts = []
    for requirement, versions in unknown:
        name = canonicalize_name(Requirement(requirement).name)
        where = "a layer spec" if name in top else "a dependency of a resolved distribution"
        seen = f"versions there: {versions}" if versions and versions != "none" else "no version"
        parts.append(f"{requirement} ({where}; {seen}, no wheel for the target, no sdist)")
    return (
        f"no index or wheelhouse has{f' (for {target})' if target else ''} {'; '.join(parts)}. "
        "Fix: check each name and version "
        "(pip spells them as PyPI does), or point the plan at an index that has them"
    )
