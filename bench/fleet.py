#!/usr/bin/env python3
"""Wall time of a template x GPU matrix on one builder and on two: prints figures (no
pass/fail). Goal from issue 6: two builders >= 1.7 x faster than one.

Run as root with the project's virtualenv after ``./farm test docker`` prepared the engine:
``.venv/bin/python bench/fleet.py [--targets 4] [--work 0]``. The builders are
molecule/fleet's two containers (created and converged here, destroyed at the end unless
``--keep``), the registry, git daemon, wheelhouse and OS base are tests/fleet.py's. The
matrix is the tiny template on ``--targets`` CPU targets (cpu-a is b1's label, cpu-b b2's,
the rest unlabelled, placed by load).

1. warm-up: the whole matrix once, so base-common is in the registry (it is the serial part
   of every run and is not what is compared);
2. before each timed run both engines drop every image and their build cache, so each run
   pulls base-common and builds every base-<gpu> and template image from nothing, and the
   previous report is set aside so the placement weighs units by kind (equal here);
3. one builder (``--limit`` b1) with one package moved, then two builders with it moved
   again: the same work, timed with the whole ``build.yml`` (prepare, plan, verify, push).

``--work S`` adds ``RUN sleep S`` to the template: a stand-in for the network-bound part of
real builds (torch wheels are GBs), which needs no CPU; without it every step here is
CPU-bound on a 2-core machine where both builder engines share the same 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests")]

from fleet import Fleet, docker  # noqa: E402
from helpers import VENV_BIN  # noqa: E402
from wheels import make_wheel  # noqa: E402

B1, B2 = "aiclipse-fleet-b1", "aiclipse-fleet-b2"
ENGINES = ("tcp://127.0.0.1:23751", "tcp://127.0.0.1:23752")  # molecule/fleet/molecule.yml


def molecule(*args: str) -> None:
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    done = subprocess.run(
        [str(VENV_BIN / "molecule"), *args, "-s", "fleet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"molecule {args[0]} -s fleet failed:\n{done.stdout[-4000:]}")


def inventory() -> str:
    """molecule's inventory of the fleet scenario (its ephemeral folder, the newest)."""
    found = sorted(
        Path.home().glob(".ansible/tmp/molecule.*.fleet/inventory/ansible_inventory.yml"),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise SystemExit("no molecule inventory for the fleet: run molecule create -s fleet")
    return str(found[-1])


def clean_engines() -> None:
    for engine in ENGINES:
        images = docker("images", "-aq", host=engine).split()
        if images:
            docker("rmi", "-f", *sorted(set(images)), host=engine, check=False)
        docker("builder", "prune", "-af", host=engine)


def timed(fleet: Fleet, version: str, limit: str = "") -> tuple[float, dict]:
    clean_engines()
    # no earlier report: the placement weighs units by kind. A report's times would carry
    # the last run's one-time costs (the first build on an engine also pulls base-common)
    # and skew the split; that is the cost model's, not the fleet's, and is reported apart.
    (Path(fleet.vars["aiclipse_reports_dir"]) / "latest").unlink(missing_ok=True)
    layers = [{"name": "essentials", "specs": [f"aiclipse-test-essential=={version}"]}]
    start = time.monotonic()
    run = fleet.build({"package_layers": layers}, limit=limit)
    seconds = time.monotonic() - start
    if run.returncode != 0:
        raise SystemExit(f"build.yml failed:\n{run.stdout[-6000:]}")
    return seconds, fleet.report()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=4, help="CPU targets in the matrix")
    parser.add_argument("--work", type=int, default=0, help="seconds of RUN sleep per template")
    parser.add_argument("--keep", action="store_true", help="keep molecule/fleet's builders")
    args = parser.parse_args()
    names = [f"cpu-{chr(ord('a') + i)}" for i in range(args.targets)]

    print("creating and converging molecule/fleet's two builders ...", flush=True)
    molecule("create")
    molecule("converge")
    try:
        with Fleet(Path(tempfile.mkdtemp(prefix="aiclipse-bench-fleet-")), inventory()) as fleet:
            wheels = Path(fleet.vars["gpu_targets"]["cpu-a"]["torch_wheelhouse"])
            make_wheel(wheels, "aiclipse-test-essential", "2.0.2")
            fleet.vars["gpu_targets"] = {
                name: dict(fleet.vars["gpu_targets"]["cpu-a"]) for name in names
            }
            if args.work:
                fragment = Path(fleet.vars["aiclipse_templates_dir"]) / "tiny"
                (fragment / "Dockerfile.fragment").write_text(f"RUN sleep {args.work}\n")
            print(f"warm-up: {len(names)} targets x tiny on both builders ...", flush=True)
            timed(fleet, "2.0.0")
            one, _ = timed(fleet, "2.0.1", limit=B1)
            two, report = timed(fleet, "2.0.2")
    finally:
        if not args.keep:
            molecule("destroy")

    images = [i for i in report["images"] if i["kind"] in ("base-gpu", "template")]
    print()
    print(f"matrix: tiny x {len(names)} CPU targets = {len(images)} images per run (base-<gpu>")
    print("  and template), base-common cached; each run from empty engines; whole build.yml")
    print(f"  (prepare, plan, build, verify, push); template sleep {args.work} s")
    print(f"one builder : {one:6.1f} s")
    print(f"two builders: {two:6.1f} s")
    print(f"speedup     : {one / two:6.2f} x   (goal >= 1.7 x)")
    for line in report.get("placement", []):
        print(f"  {line}")
    print(f"machine: {os.cpu_count()} cores shared by both builder engines and the controller")


if __name__ == "__main__":
    main()
