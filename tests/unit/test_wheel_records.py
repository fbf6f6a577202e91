"""module_utils/wheel_records.py: a wheel's RECORD read over HTTP range requests, cached.

A loopback HTTP server serves a wheel this test makes, with and without ``Range`` support;
the network test reads the real opencv wheels' RECORDs from PyPI (the collision that lost
``cv2.ximgproc`` in a real image).
"""

from __future__ import annotations

import http.server
import json
import os
import random
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from ansible.module_utils.package_layers import ResolvedDist, find_collisions
from ansible.module_utils.wheel_records import BLOCK, RecordError, dist_records, read_record
from wheels import make_wheel


class Handler(http.server.SimpleHTTPRequestHandler):
    ranges = True
    requests: ClassVar[list[str]] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        wanted = self.headers.get("Range", "")
        type(self).requests.append(wanted)
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted)
        if not (self.ranges and match):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        first, last = match.groups()
        if not first:
            start, end = max(0, len(data) - int(last)), len(data) - 1
        else:
            start, end = int(first), min(int(last or len(data) - 1), len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start : end + 1])


@pytest.fixture
def served(tmp_path: Path):
    # a wheel larger than a few blocks, its RECORD near the end as every wheel has it
    noise = random.Random(7).randbytes(3 * BLOCK)
    files = {"big/__init__.py": "", "big/blob.txt": noise.hex()}
    wheel = make_wheel(tmp_path, "big", "1.0", files=files)
    handler = type("H", (Handler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp_path))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield wheel, f"http://127.0.0.1:{server.server_address[1]}/{wheel.name}", handler
    server.shutdown()
    server.server_close()


def test_a_remote_record_is_read_with_a_few_range_requests(served) -> None:
    wheel, url, handler = served
    local = read_record(wheel.as_uri())
    assert "big/blob.txt" in local and "big-1.0.dist-info/RECORD" in local
    assert read_record(url) == local
    assert handler.requests and all(r.startswith("bytes=") for r in handler.requests)
    assert len(handler.requests) <= 3  # the tail (central directory + RECORD), not the wheel


def test_a_server_without_ranges_sends_the_whole_wheel_once(served) -> None:
    wheel, url, handler = served
    handler.ranges = False
    assert read_record(url) == read_record(wheel.as_uri())
    assert len(handler.requests) == 1


def test_records_are_cached_by_sha256_and_sdists_skipped(served, tmp_path: Path) -> None:
    _, url, handler = served
    dists = [
        ResolvedDist("big", "1.0", url=url, sha256="ab" * 32),
        ResolvedDist("built", "1.0", url="https://x.invalid/built-1.0.tar.gz", sha256="cd" * 32,
                     build="sdist"),
    ]  # fmt: skip
    records = dist_records(dists, tmp_path / "records")
    assert list(records) == ["big"] and (tmp_path / "records" / f"{'ab' * 32}.json").is_file()
    handler.requests.clear()
    assert dist_records(dists, tmp_path / "records") == records
    assert handler.requests == []  # answered from the cache


def test_an_unreadable_wheel_names_it_and_the_fix(served) -> None:
    _, url, _ = served
    with pytest.raises(RecordError, match=r"missing-1.0.*cannot read the wheel's RECORD.*Fix"):
        read_record(url.replace("big-1.0", "missing-1.0"))


def test_real_opencv_wheels_from_pypi_collide_in_cv2(tmp_path: Path) -> None:
    """The two distributions a real image put over each other, read from PyPI (no download)."""
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_NO_INDEX", "PIP_FIND_LINKS")}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
         "--quiet", "--report", str(report), "--only-binary=:all:", "--timeout", "30",
         "opencv-python-headless==4.10.0.84", "opencv-contrib-python-headless==4.10.0.84"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        why = f"PyPI unreachable? {(done.stdout + done.stderr)[-400:]}"
        if os.environ.get("AICLIPSE_NETWORK_TESTS") == "1":
            pytest.fail(why)
        pytest.skip(why)
    items = json.loads(report.read_text())["install"]
    dists = [
        ResolvedDist(
            item["metadata"]["name"],
            item["metadata"]["version"],
            url=item["download_info"]["url"],
            sha256=item["download_info"]["archive_info"]["hashes"]["sha256"],
        )
        for item in items
    ]
    records = dist_records(dists, tmp_path / "records", cert=os.environ.get("PIP_CERT"))
    (collision,) = find_collisions(records)
    assert collision.dists == ("opencv-contrib-python-headless", "opencv-python-headless")
    assert "cv2/" in collision.top_levels and "cv2/__init__.py" in collision.paths


def test_vendored_dist_info_below_the_root_is_not_the_wheels_record(tmp_path: Path) -> None:
    """setuptools 81 carries twelve vendored ``*.dist-info/RECORD`` files under
    ``setuptools/_vendor/``; the wheel's own RECORD is the one at the archive's root."""
    vendored = "tool/_vendor/dep-1.0.dist-info"
    files = {
        "tool/__init__.py": "",
        f"{vendored}/METADATA": "Metadata-Version: 2.1\nName: dep\nVersion: 1.0\n",
        f"{vendored}/RECORD": "tool/_vendor/dep-1.0.dist-info/METADATA,,\n",
    }
    wheel = make_wheel(tmp_path, "tool", "81.0", files=files)
    record = read_record(wheel.as_uri())
    assert "tool/__init__.py" in record and "tool-81.0.dist-info/RECORD" in record
