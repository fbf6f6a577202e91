"""The files each resolved wheel installs, from its ``*.dist-info/RECORD``, without downloading it.

A local wheel (a wheelhouse, ``file://``) is opened as a zip. A wheel on an index is read with
HTTP range requests, the way pip's lazy wheel reads metadata: the zip's central directory from
the end of the file, then the RECORD member alone (a few hundred kB for torch's 900 MB wheel).
A server that ignores ``Range`` sends the whole file, which is read once. Listings are cached
as ``records/<sha256>.json`` (the wheel's sha256 names its bytes), so a plan reads each wheel
once, ever.
"""

from __future__ import annotations

import io
import json
import os
import re
import ssl
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ansible.module_utils.gitsource import mask_url
from ansible.module_utils.package_layers import ResolvedDist, ResolveError, parse_record

BLOCK = 256 * 1024  # bytes per range request (the end of a wheel holds its central directory)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class RecordError(ResolveError):
    """A wheel's RECORD could not be read; the message names the wheel, why and the fix (the
    target is skipped, as when its index does not answer)."""


class _RangeReader(io.RawIOBase):
    """A seekable, read-only file over HTTP range requests: each read not yet fetched asks
    for at least ``BLOCK`` bytes from where it starts."""

    def __init__(self, url: str, opener: urllib.request.OpenerDirector, timeout: float) -> None:
        super().__init__()
        self.url, self.opener, self.timeout = url, opener, timeout
        self.pos = 0
        self.pieces: list[tuple[int, bytes]] = []  # (start, bytes) fetched so far
        status, data, content_range = self._get(f"bytes=-{BLOCK}")
        match = _CONTENT_RANGE.match(content_range)
        if status != 206 or not match:  # no range support: this is the whole file
            self.size = len(data)
            self.pieces.append((0, data))
        else:
            self.size = int(match.group(3))
            self.pieces.append((int(match.group(1)), data))

    def _get(self, header: str) -> tuple[int, bytes, str]:
        request = urllib.request.Request(self.url, headers={"Range": header})
        with self.opener.open(request, timeout=self.timeout) as answer:
            return answer.status, answer.read(), answer.headers.get("Content-Range", "")

    def _fetch(self, start: int) -> tuple[int, bytes]:
        end = min(start + BLOCK, self.size) - 1
        status, data, content_range = self._get(f"bytes={start}-{end}")
        match = _CONTENT_RANGE.match(content_range)
        # no range support after all: the whole file
        piece = (int(match.group(1)), data) if status == 206 and match else (0, data)
        self.pieces.append(piece)
        return piece

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.size - self.pos)
        if want <= 0:
            return 0
        held = next(
            ((s, d) for s, d in self.pieces if s <= self.pos < s + len(d)), None
        ) or self._fetch(self.pos)
        start, data = held
        chunk = data[self.pos - start : self.pos - start + want]
        if not chunk:
            return 0
        buffer[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


def _opener(cert: str | None) -> urllib.request.OpenerDirector:
    context = ssl.create_default_context(cafile=cert) if cert else ssl.create_default_context()
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))


def _record_of(archive: zipfile.ZipFile, where: str) -> list[str]:
    # the wheel's own RECORD sits at the archive's root; vendored distributions keep theirs
    # below it (setuptools 81: setuptools/_vendor/*.dist-info/RECORD, twelve of them)
    records = [
        n for n in archive.namelist() if n.endswith(".dist-info/RECORD") and n.count("/") == 1
    ]
    if len(records) != 1:
        raise RecordError(
            f"{where}: holds {len(records)} .dist-info/RECORD files, not 1. Fix: pin another "
            "version of it (the wheel is not valid)"
        )
    return parse_record(archive.read(records[0]).decode("utf-8"))


def _local(url: str) -> str | None:
    if not url.startswith("file://"):
        return None
    return urllib.parse.unquote(urllib.parse.urlparse(url).path)


def read_record(url: str, cert: str | None = None, timeout: float = 60.0) -> list[str]:
    """The RECORD paths of the wheel at ``url`` (``file://``, ``http(s)://``)."""
    where = mask_url(url)
    path = _local(url)
    try:
        if path is not None:
            with zipfile.ZipFile(path) as archive:
                return _record_of(archive, where)
        reader = _RangeReader(url, _opener(cert), timeout)
        with zipfile.ZipFile(io.BufferedReader(reader, BLOCK)) as archive:
            return _record_of(archive, where)
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        raise RecordError(
            f"{where}: cannot read the wheel's RECORD ({err}). Fix: check the index answers "
            "(source_timeout, the proxy and CA bundle) and plan again"
        ) from err


def dist_records(
    dists: Iterable[ResolvedDist],
    cache_dir: str | Path,
    cert: str | None = None,
    timeout: float = 60.0,
    workers: int = 8,
) -> dict[str, list[str]]:
    """Name -> RECORD paths of every resolved wheel (sdists and unhashed URLs are left out:
    their files are known only once built). Cached by sha256 under ``cache_dir``."""
    folder = Path(cache_dir)
    todo: dict[str, ResolvedDist] = {}
    out: dict[str, list[str]] = {}
    for dist in dists:
        if dist.build or not dist.sha256 or not dist.url.split("#")[0].endswith(".whl"):
            continue
        cached = folder / f"{dist.sha256}.json"
        if cached.is_file():
            out[dist.name] = json.loads(cached.read_text("utf-8"))
        else:
            todo[dist.name] = dist

    def fetch(dist: ResolvedDist) -> tuple[str, list[str]]:
        return dist.name, read_record(dist.url, cert, timeout)

    if todo:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for name, paths in pool.map(fetch, todo.values()):
                out[name] = paths
                folder.mkdir(parents=True, exist_ok=True)
                final = folder / f"{todo[name].sha256}.json"
                partial = final.with_name(f"{final.name}.{os.getpid()}.part")
                partial.write_text(json.dumps(paths), "utf-8")
                os.replace(partial, final)
    return dict(sorted(out.items()))
