"""Zero-duplication package layers: resolve once, give each distribution to one layer.

1. ``resolve`` runs pip ONCE for the union of every layer's specs (``pip install --dry-run
   --report``) for the target interpreter and platform, never the host's installed packages,
   and caches the report under the sha256 of its inputs: an unchanged plan never resolves
   again.
2. ``assign_layers`` (pure) walks the layers in order and gives each resolved distribution
   to the FIRST layer whose dependency closure needs it. Each layer is installed later with
   ``pip install --no-deps`` from its pinned list, so versions are the same everywhere, no
   file is written twice, and changing one layer's specs never touches the layers before it.
3. ``find_collisions`` reads wheel RECORD listings: distinct distributions that write the same
   files (the opencv-python family all write ``cv2/``) are named, and
   ``package_layers_exclude`` / ``package_layers_replace`` (``apply_overrides``) remove them.

Requirement markers are evaluated for the TARGET environment (``target_environment``), not
the host's. Formats: ``docs/formats.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible.module_utils.gitsource import mask_url
from ansible.module_utils.sdists import (
    Sdist,
    failure_message,
    missing_requirements,
    probe,
    write_stub,
)
from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

REPORT_FORMAT = 1
_PLATFORM_RE = re.compile(r"^(manylinux_\d+_\d+|manylinux2014|linux)_(x86_64|aarch64)$")
_PYTHON_RE = re.compile(r"^3\.(\d+)(\.\d+)?$")
_EXTRA_IN_MARKER_RE = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


class LayerError(ValueError):
    """The layers cannot be formed as configured; the message names where and the fix."""


class ResolveError(RuntimeError):
    """pip could not resolve the union of the layers; the message carries pip's reason
    (``pip_output``: pip's whole output, where pip ran and failed)."""

    pip_output = ""


class UnknownRequirements(ResolveError):
    """Requirements no index or wheelhouse has (neither a wheel for the target nor an sdist):
    a refusal of the plan, not an index that did not answer."""


class CollisionError(ValueError):
    """Distinct distributions would write the same files; the message names them and the fix."""


# ---------------------------------------------------------------------------------------------
# Data model.


@dataclass(frozen=True, order=True)
class Dep:
    """One requirement edge: ``name[extras]``, active always (``when_extra`` "") or only when
    the requiring distribution is installed with that extra."""

    name: str
    extras: tuple[str, ...] = ()
    when_extra: str = ""


@dataclass(frozen=True)
class ResolvedDist:
    """One resolved distribution with its target-evaluated dependency edges."""

    name: str
    version: str
    deps: tuple[Dep, ...] = ()
    url: str = ""
    sha256: str | None = None
    direct_url: bool = False
    # "sdist": no wheel for the target; url/sha256 are the sdist's, built in the image's
    # sdist stage (module_utils/sdists.py)
    build: str = ""

    @property
    def pin(self) -> str:
        if self.direct_url:
            return f"{self.name} @ {self.url}"
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Resolution:
    """The resolved graph: one ``ResolvedDist`` per name, sorted by name."""

    dists: tuple[ResolvedDist, ...]
    environment: tuple[tuple[str, str], ...] = ()
    key: str = ""

    def by_name(self) -> dict[str, ResolvedDist]:
        return {dist.name: dist for dist in self.dists}


@dataclass(frozen=True)
class Layer:
    """One package layer: the distributions it installs (``--no-deps``), sorted by name."""

    name: str
    dists: tuple[ResolvedDist, ...] = field(default=())

    @property
    def pins(self) -> tuple[str, ...]:
        return tuple(dist.pin for dist in self.dists)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(dist.name for dist in self.dists)

    def requirements_text(self, hashes: bool = True) -> str:
        """The pinned requirements file for ``pip install --no-deps [--require-hashes]``."""
        lines = []
        for dist in self.dists:
            if not hashes:
                lines.append(dist.pin)
                continue
            if dist.sha256 is None:
                raise LayerError(
                    f"layer {self.name}: {dist.pin} has no sha256 in the resolution (a VCS or "
                    "directory requirement). Fix: pin a wheel or sdist archive, or write this "
                    "layer with hashes=False"
                )
            lines.append(f"{dist.pin} --hash=sha256:{dist.sha256}")
        return "".join(f"{line}\n" for line in lines)


# ---------------------------------------------------------------------------------------------
# Target environment and layer spec parsing.


def target_environment(python_version: str, platform: str) -> dict[str, str]:
    """PEP 508 marker values for a CPython ``python_version`` on a Linux wheel ``platform``.

    ``python_version`` is ``3.11`` (full version taken as ``3.11.0``) or ``3.11.9``;
    ``platform`` a Linux wheel tag such as ``manylinux_2_28_x86_64``.
    """
    match = _PYTHON_RE.match(python_version)
    if not match:
        raise ValueError(
            f"python version {python_version!r} is not 3.X or 3.X.Y; write e.g. '3.11'"
        )
    platform_match = _PLATFORM_RE.match(platform)
    if not platform_match:
        raise ValueError(
            f"platform {platform!r} is not a Linux wheel tag; write e.g. manylinux_2_28_x86_64"
        )
    short = f"3.{match.group(1)}"
    full = python_version if match.group(2) else f"{short}.0"
    return {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": "posix",
        "platform_machine": platform_match.group(2),
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": full,
        "python_version": short,
        "sys_platform": "linux",
    }


def platform_tags(platform: str) -> list[str]:
    """The wheel platform tags a Linux target accepts, newest first.

    pip's ``--platform manylinux_2_28_x86_64`` matches only that exact tag, so the older
    glibc tags it implies (``manylinux_2_27`` .. ``manylinux_2_5`` and their legacy aliases
    ``manylinux2014``/``2010``/``1``) are listed explicitly.
    """
    match = _PLATFORM_RE.match(platform)
    if not match:
        raise ValueError(
            f"platform {platform!r} is not a Linux wheel tag; write e.g. manylinux_2_28_x86_64"
        )
    family, arch = match.group(1), match.group(2)
    if family == "linux":
        return [platform]
    glibc_minor = 17 if family == "manylinux2014" else int(family.split("_")[2])
    aliases = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = []
    for minor in range(glibc_minor, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in aliases and (arch == "x86_64" or minor == 17):
            tags.append(f"{aliases[minor]}_{arch}")
    return tags


def _layer_pairs(layer_specs: Iterable[Any]) -> list[tuple[str, tuple[str, ...]]]:
    """Accept ``config.PackageLayer`` objects or ``(name, specs)`` pairs."""
    pairs = []
    for item in layer_specs:
        if hasattr(item, "name") and hasattr(item, "specs"):
            pairs.append((str(item.name), tuple(item.specs)))
        else:
            name, specs = item
            pairs.append((str(name), tuple(specs)))
    return pairs


def _requirement(spec: str, where: str) -> Requirement:
    try:
        return Requirement(spec)
    except InvalidRequirement as exc:
        raise LayerError(
            f"{where}: {spec!r} is not a pip requirement ({exc}). Fix: e.g. 'numpy>=1.26'"
        ) from exc


def _marker_holds(marker: Marker | None, env: Mapping[str, str], extra: str) -> bool:
    if marker is None:
        return True
    return bool(marker.evaluate({**env, "extra": extra}))


# ---------------------------------------------------------------------------------------------
# (a) Resolution with pip.


@dataclass(frozen=True)
class ResolveOptions:
    """Where pip looks. By default the host's pip configuration (``pip.conf``, ``PIP_*``) is
    ignored, so a host-wide constraint or find-links cannot change the plan unseen."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    cert: str | None = None
    inherit_pip_config: bool = False
    pip_command: tuple[str, ...] = (sys.executable, "-m", "pip")
    timeout_s: int = 900
    # an index that does not answer for this long is named and the resolution stops
    # (the inventory's source_timeout; pip gets --timeout and --retries within it)
    network_timeout_s: float = 60.0


def union_specs(layer_specs: Iterable[Any], extra_specs: Iterable[str] = ()) -> list[str]:
    """Every layer's specs in layer order, then ``extra_specs``, without repeats."""
    seen: set[str] = set()
    union: list[str] = []
    for _, specs in _layer_pairs(layer_specs):
        for spec in specs:
            if spec not in seen:
                seen.add(spec)
                union.append(spec)
    for spec in extra_specs:
        if spec not in seen:
            seen.add(spec)
            union.append(spec)
    return union


def _local_listing(location: str) -> list[str]:
    """File names in a local find-links directory (they change what pip can pick)."""
    path = Path(location[7:] if location.startswith("file://") else location)
    if path.is_dir():
        return sorted(entry.name for entry in path.iterdir())
    return []


def resolve_inputs(
    specs: Sequence[str],
    python_version: str,
    platform: str,
    constraints: Sequence[str],
    options: ResolveOptions,
) -> dict[str, Any]:
    """Everything that decides a resolution; its canonical JSON's sha256 is the cache key."""
    return {
        "format": REPORT_FORMAT,
        "specs": list(specs),
        "python_version": python_version,
        "platform": platform,
        "constraints": sorted(constraints),
        "index_url": options.index_url,
        "extra_index_urls": list(options.extra_index_urls),
        "find_links": {link: _local_listing(link) for link in options.find_links},
        "no_index": options.no_index,
        "inherit_pip_config": options.inherit_pip_config,
    }


def inputs_key(inputs: Mapping[str, Any]) -> str:
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def index_arguments(options: ResolveOptions) -> list[str]:
    """Where pip looks: indexes, find-links, the CA bundle."""
    args = []
    if options.no_index:
        args.append("--no-index")
    if options.index_url:
        args += ["--index-url", options.index_url]
    for url in options.extra_index_urls:
        args += ["--extra-index-url", url]
    for link in options.find_links:
        args += ["--find-links", link]
    if options.cert:
        args += ["--cert", options.cert]
    return args


def pip_arguments(
    python_version: str,
    platform: str,
    options: ResolveOptions,
    report: str,
    target: str,
    requirements_file: str,
    constraints_file: str | None,
) -> list[str]:
    """The pip command line: dry run, target interpreter and platform, binary wheels only."""
    target_environment(python_version, platform)  # validates both
    short = ".".join(python_version.split(".")[:2])
    args = [
        *options.pip_command,
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--no-input",
        "--disable-pip-version-check",
        "--report",
        report,
        "--target",
        target,
        "--python-version",
        short,
        "--implementation",
        "cp",
        "--abi",
        "cp" + short.replace(".", ""),
    ]
    for tag in platform_tags(platform):
        args += ["--platform", tag]
    args.append("--only-binary=:all:")
    args += index_arguments(options)
    if constraints_file:
        args += ["--constraint", constraints_file]
    args += ["--requirement", requirements_file]
    return args


def _pip_environment(options: ResolveOptions) -> dict[str, str]:
    if options.inherit_pip_config:
        return dict(os.environ)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
    return env


PIP_RETRIES = 2  # pip's --retries: each request is tried three times within the timeout
_COULD_NOT_FETCH = re.compile(r"Could not fetch URL (\S+): (.*) - skipping")
_POOL = re.compile(r"(HTTPS?)ConnectionPool\(host='([^']+)', port=(\d+)\)")
# reasons that say the index did not answer (a 404 of a project an index lacks is normal)
_NO_ANSWER = (
    "timed out",
    "connection error",
    "Max retries exceeded",
    "problem confirming the ssl certificate",
)


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _indexes(options: ResolveOptions) -> list[str]:
    if options.no_index:
        return list(options.extra_index_urls)
    return [options.index_url or "https://pypi.org/simple", *options.extra_index_urls]


def _index_of(url: str, options: ResolveOptions) -> str:
    """The configured index that ``url`` (a project page, or scheme://host:port) is under."""
    for index in sorted(_indexes(options), key=len, reverse=True):
        plain = mask_url(index).replace("://***@", "://").rstrip("/")  # pip logs no credentials
        if url.rstrip("/").startswith(plain) or plain.startswith(url.rstrip("/") + "/"):
            return index
    return url


def unreachable_indexes(log: str, options: ResolveOptions) -> dict[str, str]:
    """Index URL -> pip's reason, for each index that did not answer (pip's ``--log``: a
    project page it gave up on after its retries, or a connection pool error)."""
    out: dict[str, str] = {}
    for url, reason in _COULD_NOT_FETCH.findall(log):
        if any(marker in reason for marker in _NO_ANSWER):
            out.setdefault(_index_of(url, options), f"{mask_url(url)}: {reason}")
    if not out:  # a wheel or metadata download that failed after its retries
        for line in log.splitlines():
            found = _POOL.search(line)
            if found and "Max retries exceeded" in line:
                scheme, host, port = found.groups()
                url = f"{scheme.lower()}://{host}:{port}"
                default = {"http": "80", "https": "443"}[scheme.lower()]
                url = url.removesuffix(f":{default}")
                out.setdefault(_index_of(url, options), mask_url(line.strip())[-300:])
    return out


def _index_role(index: str, options: ResolveOptions) -> str:
    if index in options.extra_index_urls:
        return "an extra index: the target's gpu_targets.<target>.torch_index_url"
    if index == options.index_url:
        return "the package index (--index-url)"
    if not options.index_url and index.startswith("https://pypi.org/"):
        return "PyPI, pip's default index"
    return "a host pip downloads from"


def index_message(failed: Mapping[str, str], options: ResolveOptions) -> str:
    """One message naming every index that did not answer, where it comes from, the fix."""
    parts = [
        f"{mask_url(index)} ({_index_role(index, options)}): {why}" for index, why in failed.items()
    ]
    return (
        f"pip could not reach {'; '.join(parts)}. It did not answer within "
        f"{options.network_timeout_s:g} s (source_timeout). Fix: check the URL and the network "
        "(a proxy: HTTPS_PROXY; TLS interception: build_ca_bundle), point the index at a "
        "reachable mirror, or raise source_timeout in the inventory"
    )


def _run_pip(
    args: Sequence[str], options: ResolveOptions, log: Path, count: int
) -> subprocess.CompletedProcess[str]:
    """Run pip; stop it as soon as its log shows an index that did not answer (pip would go
    on without it, or try it again for every project) or after ``options.timeout_s``."""
    deadline = time.monotonic() + options.timeout_s
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            list(args), stdout=out, stderr=err, text=True, env=_pip_environment(options)
        )
        seen, offset = "", 0
        try:
            while proc.poll() is None:
                # read what pip logged since the last look (its debug log can be megabytes)
                try:
                    with open(log, encoding="utf-8", errors="replace") as handle:
                        handle.seek(offset)
                        chunk = handle.read()
                        offset = handle.tell()
                except FileNotFoundError:
                    chunk = ""
                complete, _, rest = (seen + chunk).rpartition("\n")
                seen = rest
                failed = unreachable_indexes(complete, options)
                if failed or time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    if failed:
                        raise ResolveError(index_message(failed, options))
                    raise ResolveError(
                        f"pip did not finish resolving {count} specs within "
                        f"{options.timeout_s} s (indexes: "
                        f"{', '.join(mask_url(i) for i in _indexes(options)) or 'none'}). "
                        "Fix: check the indexes are reachable, or raise ResolveOptions.timeout_s"
                    )
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(list(args), proc.returncode, out.read(), err.read())


def run_pip_report(
    specs: Sequence[str],
    python_version: str,
    platform: str,
    constraints: Sequence[str],
    options: ResolveOptions,
) -> dict[str, Any]:
    """Run pip once and return its installation report (a dict)."""
    with tempfile.TemporaryDirectory(prefix="aiclipse-resolve-") as tmp:
        work = Path(tmp)
        (work / "requirements.txt").write_text("".join(f"{s}\n" for s in specs), "utf-8")
        constraints_file = None
        if constraints:
            constraints_file = str(work / "constraints.txt")
            Path(constraints_file).write_text("".join(f"{c}\n" for c in constraints), "utf-8")
        args = pip_arguments(
            python_version,
            platform,
            options,
            str(work / "report.json"),
            str(work / "target"),
            str(work / "requirements.txt"),
            constraints_file,
        )
        log = work / "pip.log"
        per_try = max(1.0, options.network_timeout_s / (PIP_RETRIES + 1))
        args += ["--timeout", f"{per_try:g}", "--retries", str(PIP_RETRIES), "--log", str(log)]
        done = _run_pip(args, options, log, len(specs))
        if done.returncode != 0:
            failed = unreachable_indexes(_read(log), options)
            if failed:
                raise ResolveError(index_message(failed, options))
            tail = "\n".join(mask_url(done.stderr or done.stdout).strip().splitlines()[-15:])
            cause = conflict_cause(_read(log))
            if cause:
                tail = f"{tail}\n{cause}"
            error = ResolveError(
                f"pip could not resolve the package layers for python {python_version} on "
                f"{platform} (exit {done.returncode}):\n{tail}\nFix: relax or change the specs "
                "named above"
            )
            error.pip_output = mask_url(f"{done.stdout}\n{done.stderr}")
            raise error
        return json.loads((work / "report.json").read_text("utf-8"))


_LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:,.]+\s")


def conflict_cause(log: str) -> str:
    """pip's ``The conflict is caused by:`` block from its log (``--quiet`` hides it): who
    asks for what, e.g. ``exif-tools 2.0 depends on numpy<2`` against ``The user requested
    (constraint) numpy==2.1.0``."""
    lines = [_LOG_STAMP.sub("", line) for line in log.splitlines()]
    for start, line in enumerate(lines):
        if line.strip() == "The conflict is caused by:":
            block = []
            for item in lines[start + 1 :]:
                if not item.strip() or item.startswith("To fix this"):
                    break
                block.append(item.rstrip())
            return "The conflict is caused by:\n" + "\n".join(block)
    return ""


MAX_SDIST_ROUNDS = 25  # pip runs at most this often for one resolution (each round: new sdists)


def resolve_with_sdists(
    specs: Sequence[str],
    python_version: str,
    platform: str,
    constraints: Sequence[str],
    options: ResolveOptions,
) -> tuple[dict[str, Any], dict[str, Sdist]]:
    """pip's report for ``specs``, where a requirement with no wheel for the target is served
    by its sdist (``sdists.probe``, a metadata stub in a find-links folder for the resolver).
    A requirement with neither is collected, its layer spec set aside, and pip runs again, so
    every unknown name is reported at once."""
    found: dict[str, Sdist] = {}
    unknown: list[tuple[str, str]] = []
    where = f"python {python_version} on {platform}"
    active = list(specs)
    with tempfile.TemporaryDirectory(prefix="aiclipse-stubs-") as stubs:
        constraints_file = None
        if constraints:
            constraints_file = str(Path(stubs) / "constraints.txt.in")
            Path(constraints_file).write_text("".join(f"{c}\n" for c in constraints), "utf-8")
        for _ in range(MAX_SDIST_ROUNDS):
            round_options = options
            if found:
                round_options = dataclasses.replace(
                    options, find_links=(*options.find_links, stubs)
                )
            try:
                report = run_pip_report(
                    active, python_version, platform, constraints, round_options
                )
            except ResolveError as err:
                missing = missing_requirements(err.pip_output)
                if not missing:
                    if unknown:
                        raise UnknownRequirements(
                            f"{failure_message(unknown, specs, where)}\n{err}"
                        ) from err
                    raise
                progressed = False
                for requirement, versions in missing:
                    name = canonicalize_name(Requirement(requirement).name)
                    sdist = None
                    if name not in found:
                        sdist = probe(
                            requirement,
                            options.pip_command,
                            index_arguments(options),
                            constraints_file,
                            _pip_environment(options),
                            options.timeout_s,
                        )
                    if sdist is not None:
                        found[sdist.name] = sdist
                        write_stub(Path(stubs), sdist)
                        progressed = True
                        continue
                    if any(canonicalize_name(Requirement(r).name) == name for r, _ in unknown):
                        continue  # asked again (a constraint or another requirement): no news
                    unknown.append((requirement, versions))
                    kept = [s for s in active if canonicalize_name(Requirement(s).name) != name]
                    progressed = progressed or len(kept) < len(active)
                    active = kept
                if not progressed:
                    if not unknown:
                        raise
                    message = failure_message(unknown, specs, where)
                    raise UnknownRequirements(f"{message}\n{err}") from err
                continue
            if unknown:
                raise UnknownRequirements(failure_message(unknown, specs, where))
            return report, found
    raise ResolveError(
        f"pip found new sdist-only requirements in each of {MAX_SDIST_ROUNDS} rounds. Fix: "
        "pin the sdist-only distributions' dependencies in a layer"
    )


def _archive_sha256(download_info: Mapping[str, Any]) -> str | None:
    archive = download_info.get("archive_info")
    if not isinstance(archive, Mapping):
        return None
    hashes = archive.get("hashes")
    if isinstance(hashes, Mapping) and "sha256" in hashes:
        return str(hashes["sha256"])
    legacy = archive.get("hash")
    if isinstance(legacy, str) and legacy.startswith("sha256="):
        return legacy[len("sha256=") :]
    return None


def _deps_for(metadata: Mapping[str, Any], env: Mapping[str, str], where: str) -> tuple[Dep, ...]:
    requires = list(metadata.get("requires_dist") or ())
    extras = {canonicalize_name(e) for e in metadata.get("provides_extra") or ()}
    for text in requires:
        extras.update(canonicalize_name(e) for e in _EXTRA_IN_MARKER_RE.findall(text))
    deps: set[Dep] = set()
    for text in requires:
        req = _requirement(text, where)
        name = canonicalize_name(req.name)
        wanted = tuple(sorted(canonicalize_name(e) for e in req.extras))
        if _marker_holds(req.marker, env, ""):
            deps.add(Dep(name, wanted, ""))
            continue
        for extra in sorted(extras):
            if _marker_holds(req.marker, env, extra):
                deps.add(Dep(name, wanted, extra))
    return tuple(sorted(deps))


def parse_report(
    report: Mapping[str, Any],
    env: Mapping[str, str],
    key: str = "",
    sdists: Mapping[str, Sdist] | None = None,
) -> Resolution:
    """Turn a pip installation report into a ``Resolution`` with target-evaluated edges.
    ``sdists``: the distributions resolved through a metadata stub, locked by their sdist."""
    sdists = sdists or {}
    items = report.get("install")
    if not isinstance(items, list):
        raise ResolveError("the pip report has no 'install' list; Fix: use pip >= 22.2")
    dists: dict[str, ResolvedDist] = {}
    for i, item in enumerate(items):
        metadata = item["metadata"]
        name = canonicalize_name(metadata["name"])
        where = f"pip report install[{i}] ({name})"
        if name in dists:
            raise ResolveError(f"{where}: {name} appears twice. Fix: report this pip bug")
        info = item.get("download_info") or {}
        url = str(info.get("url", ""))
        vcs = info.get("vcs_info")
        direct = bool(item.get("is_direct")) and not url.startswith("file:")
        if isinstance(vcs, Mapping):
            url = f"{vcs.get('vcs', 'git')}+{url}@{vcs.get('commit_id', '')}"
            direct = True
        sha256 = _archive_sha256(info)
        build = ""
        sdist = sdists.get(name)
        if sdist is not None and sdist.version == str(metadata["version"]):
            url, sha256, build, direct = sdist.url, sdist.sha256, "sdist", False
        dists[name] = ResolvedDist(
            name=name,
            version=str(metadata["version"]),
            deps=_deps_for(metadata, env, where),
            url=url,
            sha256=sha256,
            direct_url=direct,
            build=build,
        )
    return Resolution(
        dists=tuple(dists[name] for name in sorted(dists)),
        environment=tuple(sorted(env.items())),
        key=key,
    )


def resolve(
    specs_by_layer: Iterable[Any],
    python_version: str,
    platform: str,
    constraints: Sequence[str] = (),
    options: ResolveOptions | None = None,
    cache_dir: str | Path | None = None,
    extra_specs: Sequence[str] = (),
) -> Resolution:
    """Resolve the union of all layers' specs once (cached by the sha256 of the inputs).

    ``constraints`` are pip constraint lines (the torch trio of the target);
    ``extra_specs`` are resolved too without belonging to a layer (replacements named in
    ``package_layers_replace``).
    """
    options = options or ResolveOptions()
    env = target_environment(python_version, platform)
    specs = union_specs(specs_by_layer, extra_specs)
    if not specs:
        return Resolution(dists=(), environment=tuple(sorted(env.items())), key="")
    inputs = resolve_inputs(specs, python_version, platform, constraints, options)
    key = inputs_key(inputs)
    cache_file = Path(cache_dir) / f"resolution-{key}.json" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        cached = json.loads(cache_file.read_text("utf-8"))
        found = {n: Sdist.from_dict(d) for n, d in cached.get("sdists", {}).items()}
        return parse_report(cached["report"], env, key, found)
    report, found = resolve_with_sdists(specs, python_version, platform, constraints, options)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(cache_file.name + f".{os.getpid()}.part")
        sdists = {name: sdist.as_dict() for name, sdist in sorted(found.items())}
        partial.write_text(
            json.dumps({"inputs": inputs, "report": report, "sdists": sdists}, sort_keys=True),
            "utf-8",
        )
        os.replace(partial, cache_file)
    return parse_report(report, env, key, found)


# ---------------------------------------------------------------------------------------------
# (b) Assignment: the first layer whose closure needs a distribution gets it.


def closure(
    specs: Sequence[str],
    graph: Mapping[str, ResolvedDist],
    env: Mapping[str, str],
    where: str = "specs",
) -> set[str]:
    """Names of every distribution ``specs`` need, extras followed, markers for ``env``."""
    todo: list[tuple[str, str]] = []
    for spec in specs:
        req = _requirement(spec, where)
        if not _marker_holds(req.marker, env, ""):
            continue
        name = canonicalize_name(req.name)
        todo.append((name, ""))
        todo.extend((name, canonicalize_name(extra)) for extra in req.extras)
    seen: set[tuple[str, str]] = set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        name, extra = node
        dist = graph.get(name)
        if dist is None:
            raise LayerError(
                f"{where}: {name} is needed but not in the resolution. Fix: resolve again "
                "with the current specs (the resolution is stale or was made for other specs)"
            )
        if extra:
            todo.append((name, ""))
        for dep in dist.deps:
            if dep.when_extra == extra:
                if dep.name not in graph:
                    raise LayerError(
                        f"{where}: {dist.pin} requires {dep.name} for the target, but the "
                        "resolution has no such distribution (pip evaluated markers for a "
                        "different interpreter?). Fix: resolve for the target's python version"
                    )
                todo.append((dep.name, ""))
                todo.extend((dep.name, e) for e in dep.extras)
    return {name for name, _ in seen}


def assign_layers(
    layer_specs: Iterable[Any],
    resolved: Resolution | Mapping[str, ResolvedDist],
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[Layer]:
    """Give every resolved distribution to the first layer whose closure needs it.

    Raises ``LayerError`` when a resolved distribution is needed by no layer (it would be
    installed by nobody), or a layer spec names something the resolution lacks.
    """
    if isinstance(resolved, Resolution):
        graph = resolved.by_name()
        env = dict(resolved.environment) if env is None else env
    else:
        graph = dict(resolved)
    if not env:
        raise ValueError(
            "assign_layers: no target environment to evaluate spec markers; pass "
            "env=target_environment(python_version, platform) or a Resolution that carries one"
        )
    assigned: set[str] = set()
    layers: list[Layer] = []
    for name, specs in _layer_pairs(layer_specs):
        needed = closure(specs, graph, env, _layer_label(name, labels))
        new = sorted(needed - assigned)
        assigned.update(new)
        layers.append(Layer(name=name, dists=tuple(graph[n] for n in new)))
    orphans = sorted(set(graph) - assigned)
    if orphans:
        raise LayerError(
            f"package_layers: the resolution holds {', '.join(orphans)}, which no layer needs. "
            "Fix: add them to a layer's specs, or resolve without them (apply_overrides prunes "
            "what an exclusion left unneeded)"
        )
    return layers


def constraints_text(layers: Iterable[Layer]) -> str:
    """A pip constraints file pinning every distribution of every layer (for PIP_CONSTRAINT)."""
    pins = sorted(
        (dist.name, f"{dist.name}=={dist.version}") for layer in layers for dist in layer.dists
    )
    return "".join(f"{pin}\n" for _, pin in pins)


def _layer_label(name: str, labels: Mapping[str, str] | None) -> str:
    return (labels or {}).get(name, f"layer {name}")


def override_conflicts(
    layer_specs: Iterable[Any],
    exclude: Iterable[str] = (),
    replace: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """Every layer spec that requests a distribution ``package_layers_exclude`` or
    ``package_layers_replace`` removes, one message each, the layer named by its label
    (``labels``: layer name -> where it is configured, e.g. ``package_layers[0] (essentials)``).
    Checked before anything resolves."""
    replace = {canonicalize_name(k): canonicalize_name(v) for k, v in (replace or {}).items()}
    excluded = {canonicalize_name(name) for name in exclude}
    problems = []
    for name, specs in _layer_pairs(layer_specs):
        label = _layer_label(name, labels)
        for j, spec in enumerate(specs):
            req_name = canonicalize_name(_requirement(spec, label).name)
            if req_name in excluded:
                problems.append(
                    f"{label}.specs[{j}]: requests {spec!r}, which package_layers_exclude "
                    f"removes. Fix: drop {req_name} from package_layers_exclude or from the specs"
                )
            elif req_name in replace:
                problems.append(
                    f"{label}.specs[{j}]: requests {spec!r}, which package_layers_replace "
                    f"serves with {replace[req_name]}. Fix: request {replace[req_name]} there "
                    f"instead, or drop {req_name} from package_layers_replace"
                )
    return problems


def apply_overrides(
    resolved: Resolution,
    layer_specs: Iterable[Any],
    exclude: Iterable[str] = (),
    replace: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Resolution:
    """Remove excluded distributions, point requirements of replaced ones at the replacement,
    and drop what no layer needs any more. Replacements must be resolved (``extra_specs``)."""
    replace = {canonicalize_name(k): canonicalize_name(v) for k, v in (replace or {}).items()}
    excluded = {canonicalize_name(name) for name in exclude}
    removed = excluded | set(replace)
    pairs = _layer_pairs(layer_specs)
    conflicts = override_conflicts(pairs, excluded, replace, labels)
    if conflicts:
        raise LayerError("\n".join(conflicts))
    graph = resolved.by_name()
    missing = sorted({new for new in replace.values() if new not in graph})
    if missing:
        raise LayerError(
            f"package_layers_replace: {', '.join(missing)} is not in the resolution. Fix: "
            "resolve with the replacements as extra_specs"
        )
    rewritten: dict[str, ResolvedDist] = {}
    for dist in resolved.dists:
        if dist.name in removed:
            continue
        deps = set()
        for dep in dist.deps:
            if dep.name in excluded:
                continue
            if dep.name in replace:
                dep = Dep(replace[dep.name], (), dep.when_extra)
            deps.add(dep)
        rewritten[dist.name] = dataclasses.replace(dist, deps=tuple(sorted(deps)))
    env = dict(resolved.environment)
    if not env:
        raise ValueError(
            "apply_overrides: the resolution carries no target environment; build it with "
            "resolve() or parse_report(report, target_environment(...))"
        )
    needed: set[str] = set()
    for name, specs in pairs:
        needed |= closure(specs, rewritten, env, _layer_label(name, labels))
    return Resolution(
        dists=tuple(rewritten[n] for n in sorted(needed)),
        environment=resolved.environment,
        key=resolved.key,
    )


# ---------------------------------------------------------------------------------------------
# (c) File collisions between distributions, from wheel RECORDs.


@dataclass(frozen=True)
class Collision:
    """Distributions that write the same files: where (top-level names) and how many."""

    dists: tuple[str, ...]
    top_levels: tuple[str, ...]
    paths: tuple[str, ...]

    def describe(self) -> str:
        sample = self.paths[0]
        return (
            f"{', '.join(self.dists)} all write {', '.join(self.top_levels)} "
            f"({len(self.paths)} file{'s' if len(self.paths) != 1 else ''}, e.g. {sample})"
        )


def parse_record(text: str) -> list[str]:
    """The paths of a wheel's RECORD file (CSV: path, hash, size)."""
    return [row[0] for row in csv.reader(io.StringIO(text)) if row and row[0]]


def read_wheel_record(wheel: str | Path) -> list[str]:
    """The paths a wheel installs, from its ``*.dist-info/RECORD``."""
    with zipfile.ZipFile(wheel) as archive:
        records = [n for n in archive.namelist() if n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise ValueError(
                f"{wheel}: holds {len(records)} .dist-info/RECORD files, not 1; "
                "Fix: pass a valid wheel"
            )
        return parse_record(archive.read(records[0]).decode("utf-8"))


def install_path(path: str) -> str | None:
    """Where a RECORD path lands, as a comparable key; None for per-distribution metadata."""
    parts = path.replace("\\", "/").split("/")
    if parts[0].endswith(".dist-info") or "__pycache__" in parts:
        return None
    if parts[0].endswith(".data") and len(parts) > 2:
        scheme, rest = parts[1], "/".join(parts[2:])
        if scheme in ("purelib", "platlib"):
            return rest
        return f"<{scheme}>/{rest}"
    return "/".join(parts)


def find_collisions(records: Mapping[str, Iterable[str]]) -> list[Collision]:
    """Group the files written by more than one distribution, per set of distributions."""
    writers: dict[str, set[str]] = {}
    for dist, paths in records.items():
        name = canonicalize_name(dist)
        for path in paths:
            key = install_path(path)
            if key is not None:
                writers.setdefault(key, set()).add(name)
    groups: dict[tuple[str, ...], list[str]] = {}
    for key, names in writers.items():
        if len(names) > 1:
            groups.setdefault(tuple(sorted(names)), []).append(key)
    collisions = []
    for dists, paths in sorted(groups.items()):
        paths.sort()
        tops = sorted({p.split("/")[0] + "/" if "/" in p else p for p in paths})
        collisions.append(Collision(dists=dists, top_levels=tuple(tops), paths=tuple(paths)))
    return collisions


def check_collisions(
    records: Mapping[str, Iterable[str]],
    exclude: Iterable[str] = (),
    replace: Mapping[str, str] | None = None,
) -> None:
    """Raise ``CollisionError`` naming every collision left after exclusions/replacements."""
    removed = {canonicalize_name(n) for n in exclude} | {
        canonicalize_name(n) for n in (replace or {})
    }
    kept = {d: p for d, p in records.items() if canonicalize_name(d) not in removed}
    collisions = find_collisions(kept)
    if not collisions:
        return
    first = collisions[0].dists
    lines = "\n".join(f"  - {c.describe()}" for c in collisions)
    raise CollisionError(
        f"package_layers: distributions write the same files:\n{lines}\n"
        f"Fix: keep one of each group, e.g. package_layers_replace: {{{first[0]}: {first[-1]}}} "
        f"or package_layers_exclude: [{first[0]}]"
    )


def _requested(layer_specs: Iterable[Any], labels: Mapping[str, str] | None) -> dict[str, str]:
    """Distribution -> ``<layer label>.specs[j] ('spec')`` for every spec a layer names."""
    out: dict[str, str] = {}
    for name, specs in _layer_pairs(layer_specs):
        label = _layer_label(name, labels)
        for j, spec in enumerate(specs):
            req = _requirement(spec, label)
            out.setdefault(canonicalize_name(req.name), f"{label}.specs[{j}] ({spec!r})")
    return out


def collision_problems(
    collisions: Sequence[Collision],
    resolution: Resolution,
    layer_specs: Iterable[Any],
    records: Mapping[str, Iterable[str]],
    labels: Mapping[str, str] | None = None,
    sample: int = 5,
) -> list[str]:
    """One message per collision: who writes which files, why each is there, and the line of
    configuration that settles it. The distribution kept is the one that writes every file the
    others write (opencv-contrib-python-headless over opencv-python-headless: the contrib
    build is the superset), else the one a layer names, else the first by name."""
    pairs = _layer_pairs(layer_specs)
    requested = _requested(pairs, labels)
    required_by: dict[str, set[str]] = {}
    for dist in resolution.dists:
        for dep in dist.deps:
            required_by.setdefault(dep.name, set()).add(dist.name)
    problems = []
    for collision in collisions:
        files = {
            name: {key for p in records.get(name, ()) if (key := install_path(p)) is not None}
            for name in collision.dists
        }
        union = set().union(*files.values())
        supersets = [n for n in collision.dists if files[n] >= union]
        named = [n for n in collision.dists if n in requested]
        keep = (supersets or named or list(collision.dists))[0]
        if len(supersets) > 1 or (not supersets and len(named) > 1):
            keep = sorted(supersets or named, key=lambda n: (n not in requested, n))[0]
        why = []
        for name in collision.dists:
            whence = []
            if name in requested:
                whence.append(f"requested by {requested[name]}")
            if required_by.get(name):
                whence.append(f"required by {', '.join(sorted(required_by[name]))}")
            why.append(f"{name} ({'; '.join(whence) or 'resolved'})")
        fixes = []
        for name in collision.dists:
            if name == keep:
                continue
            steps = []
            if name in requested:
                steps.append(f"drop {requested[name]}")
            if required_by.get(name) or name not in requested:
                steps.append(f"add to package_layers_replace: `{name}: {keep}`")
            fixes.append(" and ".join(steps))
        reason = "it writes every file the others do" if keep in supersets else "a layer names it"
        shown = ", ".join(collision.paths[:sample])
        more = f", ... ({len(collision.paths)} files)" if len(collision.paths) > sample else ""
        problems.append(
            f"{', '.join(collision.dists)} write the same files: {', '.join(collision.top_levels)}"
            f" ({shown}{more}). They come from: {'; '.join(why)}. Fix: keep {keep} ({reason}): "
            f"{'; '.join(fixes)} (or list the others in package_layers_exclude)"
        )
    return problems
