#!/usr/bin/env python3
"""Runtime figures (printed, no pass/fail). Needs docker, aria2c and curl; about a minute.

1. Warm start: time from ``docker run`` to ComfyUI answering, on a volume whose models are
   already there, next to the fake ComfyUI's own start time (run on the host, and as the app
   reports it inside the container). The difference is what start.sh costs. ComfyUI is
   reached through the authenticating proxy (basic auth) in front of it, and the time from
   start.sh's 'comfyui: starting' line to ComfyUI answering through the proxy is printed too
   (issue 14: within 3 s).
2. Download throughput: download_models.py with 3 files at a time vs one curl, against a
   loopback server that throttles each connection (default 5 MB/s, 3 files of 20 MB).

Usage: .venv/bin/python bench/runtime.py [--rate-mb 5] [--size-mb 20] [--warm-runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "docker" / "runtime"))
sys.path.insert(0, str(REPO / "tests"))

import harness  # noqa: E402
from helpers import free_port  # noqa: E402

MB = 1_000_000


def fake_comfy_own_start(runs: int) -> list[float]:
    """Seconds from spawning the fake ComfyUI on the host to /system_stats answering."""
    times = []
    for _ in range(runs):
        port = free_port()
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests/fixtures/comfyui/main.py"),
                "--listen",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            times.append(harness.wait_http(f"http://127.0.0.1:{port}/system_stats", 30) - started)
        finally:
            proc.terminate()
            proc.wait()
    return times


def bare_container_start(image: str, runs: int) -> list[float]:
    """Seconds from ``docker run`` of the fake ComfyUI itself (no start.sh) to it answering."""
    times = []
    for run in range(runs):
        port = free_port()
        name = f"aiclipse-bench-bare-{uuid.uuid4().hex[:8]}-{run}"
        started = time.monotonic()
        try:
            harness.docker(
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "host",
                "--user",
                "1000",
                "--entrypoint",
                "/opt/venv/bin/python",
                image,
                "/opt/ComfyUI/main.py",
                "--listen",
                "127.0.0.1",
                "--port",
                str(port),
            )
            url = f"http://127.0.0.1:{port}/system_stats"
            times.append(harness.wait_http(url, 60, name) - started)
        finally:
            harness.remove_container(name)
    return times


def comfy_started_at(container: str) -> float:
    """The wall-clock time of start.sh's 'comfyui: starting' line (docker's timestamp)."""
    from datetime import datetime

    out = harness.docker("logs", "-t", container).stdout
    line = next(x for x in out.splitlines() if "comfyui: starting" in x)
    stamp = line.split()[0]  # RFC 3339 with nanoseconds
    whole, _, frac = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole + "+00:00").timestamp()
    return seconds + float("0." + (frac or "0"))


def warm_start(image: str, workdir: Path, runs: int) -> list[float]:
    """Seconds from ``docker run`` to ComfyUI answering, through start.sh, on a warm volume."""
    volume = f"aiclipse-bench-{uuid.uuid4().hex[:8]}"
    files = {
        f"/m/model{i}.safetensors": harness.safetensors_bytes(2_500_000, seed=i) for i in (1, 2, 3)
    }
    manifests = workdir / "manifests"
    manifests.mkdir(parents=True)
    for path in (workdir.parent, workdir, manifests):
        path.chmod(0o755)  # the runtime user reads the bind mount
    port = free_port()
    env = {
        "AICLIPSE_LISTEN": "127.0.0.1",
        "COMFY_PORT": str(port),  # the authenticating proxy's; ComfyUI is behind it
        "COMFY_INTERNAL_PORT": str(free_port()),
        "COMFY_TOKEN": uuid.uuid4().hex,
        "JUPYTER_PORT": str(free_port()),
        "JUPYTER_TOKEN": uuid.uuid4().hex,
    }
    auth = harness.basic_auth("comfy", env["COMFY_TOKEN"])
    names = []
    results = []
    own_starts = []
    try:
        with harness.ModelServer(files) as server:
            (manifests / "models_manifest.txt").write_text(
                "".join(f"checkpoints {server.url(path)}\n" for path in files)
            )
            (manifests / "models_manifest.txt").chmod(0o644)
            sent_after_fill = 0
            for run in range(runs + 1):  # the first run fills the volume
                name = f"{volume}-{run}"
                names.append(name)
                argv = [
                    "docker",
                    "run",
                    "-d",
                    "--name",
                    name,
                    "--network",
                    "host",
                    "-v",
                    f"{volume}:/workspace",
                    "-v",
                    f"{manifests}:/manifests:ro",
                ]
                for key in env:
                    argv += ["-e", key]
                started = time.monotonic()
                subprocess.run(
                    [*argv, image], env={**os.environ, **env}, check=True, capture_output=True
                )
                url = f"http://127.0.0.1:{port}/system_stats"
                answered = harness.wait_http(url, 120, name, headers=auth)
                answered_wall = time.time()
                if run:
                    results.append(answered - started)
                    own_starts.append(answered_wall - comfy_started_at(name))
                else:
                    sent_after_fill = server.total_sent
                harness.docker("stop", "-t", "20", name)
            sent_warm = server.total_sent - sent_after_fill
        print(f"  bytes downloaded by the {runs} warm starts: {sent_warm}")
        print(
            "  ComfyUI's own start (start.sh's 'comfyui: starting' line) -> answering through "
            f"the proxy: {' '.join(f'{t:.2f}s' for t in own_starts)}, "
            f"median {statistics.median(own_starts):.2f}s"
        )
    finally:
        for name in names:
            harness.remove_container(name)
        harness.remove_volume(volume)
    return results


def throughput(workdir: Path, rate: float, size: int) -> None:
    files = {f"/t/file{i}.bin": os.urandom(size) for i in (1, 2, 3)}
    with harness.ModelServer(files, rate=rate) as server:
        started = time.monotonic()
        subprocess.run(["curl", "-sS", "-o", os.devnull, server.url("/t/file1.bin")], check=True)
        curl = size / (time.monotonic() - started)
        manifest = workdir / "throughput.txt"
        manifest.write_text("".join(f"checkpoints {server.url(p)}\n" for p in files))
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                str(REPO / "runtime/download_models.py"),
                "--manifest",
                str(manifest),
                "--models-dir",
                str(workdir / "models"),
                "--jobs",
                "3",
                "--reserve-mib",
                "1",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.monotonic() - started
        warm_sent, warm_hashes, warm_code = warm_rerun(manifest, workdir / "models", server)
    if done.returncode != 0:
        print(done.stdout[-2000:])
        raise SystemExit("download_models.py failed")
    aggregate = 3 * size / seconds
    print(f"  server limit: {rate / MB:.1f} MB/s per connection; 3 files of {size / MB:.0f} MB")
    print(f"  one curl, one file:                {curl / MB:6.2f} MB/s")
    print(f"  download_models.py, 3 at a time:   {aggregate / MB:6.2f} MB/s ({seconds:.1f}s)")
    print(f"  ratio vs 3 x one curl (the link):  {aggregate / (3 * curl):6.2f}")
    print(
        f"  warm re-run (files present):       exit {warm_code}, {warm_sent} bytes downloaded, "
        f"{warm_hashes} files re-hashed"
    )


def warm_rerun(manifest: Path, models: Path, server) -> tuple[int, int, int]:
    """download_models.py again, in this process, on the filled folder: (bytes the server
    sent, files hashed (download_models.HASH_CALLS), exit status)."""
    sys.path.insert(0, str(REPO / "runtime"))
    import download_models

    sent, hashes = server.total_sent, download_models.HASH_CALLS
    argv = ["--manifest", str(manifest), "--models-dir", str(models), "--reserve-mib", "1"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = download_models.main(argv)
    return server.total_sent - sent, download_models.HASH_CALLS - hashes, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate-mb", type=float, default=5.0)
    parser.add_argument("--size-mb", type=float, default=20.0)
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aiclipse-bench-") as tmp:
        work = Path(tmp)
        tag = f"aiclipse-bench/runtime:{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        harness.build_image(tag, work / "image")
        print(f"test image built in {time.monotonic() - started:.1f}s (BuildKit cache warm or not)")
        try:
            own = fake_comfy_own_start(3)
            bare = bare_container_start(image=tag, runs=args.warm_runs)
            print("warm start (models already on the volume, Jupyter on, no ssh key):")
            print(
                "  fake ComfyUI's own start on the host:           "
                f"median {statistics.median(own):.2f}s"
            )
            print(
                f"  docker run of the fake ComfyUI alone (no start.sh): "
                f"{' '.join(f'{t:.2f}s' for t in bare)}, median {statistics.median(bare):.2f}s"
            )
            results = warm_start(tag, work / "warm", args.warm_runs)
            print(
                f"  docker run through start.sh -> ComfyUI answers: "
                f"{' '.join(f'{t:.2f}s' for t in results)}, "
                f"median {statistics.median(results):.2f}s"
            )
            print(
                f"  start.sh's cost (median difference):            "
                f"{statistics.median(results) - statistics.median(bare):.2f}s"
            )
        finally:
            harness.remove_image(tag)
        print("download throughput (loopback, throttled per connection):")
        throughput(work, args.rate_mb * MB, int(args.size_mb * MB))
    return 0


if __name__ == "__main__":
    sys.exit(main())
