#!/usr/bin/env python3
"""GPU smoke test: the image suite's torch and GPU checks on this machine's GPU, plus figures.

    python3 bench/gpu_smoke.py --gpu h100 [--python /opt/venv/bin/python]

For a GPU machine with no docker (the lent H200, a pod): the very checks of
roles/image_verify/files/test_image.py that need the card (torch's CUDA build, the compiled
arches serving the GPU, a matmul on the card against the CPU) run against the local Python
through a small local backend (``LocalHost``, the subset of testinfra's host the checks use),
so neither pytest nor testinfra is needed there. ``--gpu`` names the card in the CUDA/torch
matrix (an H200 is an ``h100``: compute capability 9.0). Then it prints figures: device,
driver, torch/CUDA, arch list, bf16/fp16/fp32 matmul TFLOPS and host<->device bandwidth.
Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "roles" / "image_verify" / "files" / "test_image.py"
CHECKS = (
    "test_torch_version_and_cuda_match_the_target",
    "test_compiled_arches_serve_the_target",
    "test_gpu_is_the_targets_and_computes",
)


@dataclass
class Ran:
    rc: int
    stdout: str
    stderr: str


class LocalHost:
    """What the checks call on testinfra's ``host``, run on this machine."""

    def run(self, command: str) -> Ran:
        done = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
        return Ran(done.returncode, done.stdout, done.stderr)

    def check_output(self, command: str) -> str:
        ran = self.run(command)
        if ran.rc != 0:
            raise AssertionError(f"{command!r} exited {ran.rc}: {ran.stderr[-2000:]}")
        return ran.stdout.strip()


def _python_json(python: str, code: str) -> object:
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def figures(python: str) -> dict[str, object]:
    code = r"""
import json, time, torch
d = torch.device("cuda")
out = {"device": torch.cuda.get_device_name(0), "capability": torch.cuda.get_device_capability(0),
       "torch": torch.__version__, "cuda": torch.version.cuda, "arches": torch.cuda.get_arch_list()}
for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
    n = 8192
    a = torch.randn(n, n, device=d, dtype=dtype); b = torch.randn(n, n, device=d, dtype=dtype)
    for _ in range(3): a @ b
    torch.cuda.synchronize(); t = time.perf_counter(); reps = 20
    for _ in range(reps): a @ b
    torch.cuda.synchronize(); s = time.perf_counter() - t
    out[f"matmul_{name}_tflops"] = round(2 * n ** 3 * reps / s / 1e12, 1)
x = torch.empty(256 * 2 ** 20, dtype=torch.uint8).pin_memory()
torch.cuda.synchronize(); t = time.perf_counter()
y = x.to(d, non_blocking=True); torch.cuda.synchronize()
out["h2d_gb_s"] = round(x.numel() / (time.perf_counter() - t) / 1e9, 1)
print(json.dumps(out))
"""
    data = _python_json(python, code)
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    data["driver"] = smi.stdout.strip() or "nvidia-smi not found"  # type: ignore[index]
    return data  # type: ignore[return-value]


def _importable_module_utils() -> None:
    """module_utils/ as ``ansible.module_utils`` even where Ansible is not installed (a GPU
    pod), and ``packaging`` from setuptools' vendored copy where it is missing."""
    import types

    try:
        import ansible.module_utils as mu
    except ImportError:
        sys.modules["ansible"] = types.ModuleType("ansible")
        mu = types.ModuleType("ansible.module_utils")
        mu.__path__ = []  # type: ignore[attr-defined]
        sys.modules["ansible.module_utils"] = mu
    mu.__path__.append(str(REPO / "module_utils"))  # type: ignore[attr-defined]
    try:
        import packaging.version  # noqa: F401
    except ImportError:
        import setuptools

        sys.path.append(str(Path(setuptools.__file__).parent / "_vendor"))


def _capability(gpu: str) -> str | None:
    """The card's compute capability from the matrix file's ``gpus:`` block (no YAML needed)."""
    text = (REPO / "playbooks" / "vars" / "cuda_torch_matrix.yml").read_text(encoding="utf-8")
    block = text.split("\n  gpus:\n", 1)[1].split("\n  rows:", 1)[0]
    for line in block.splitlines():
        name, _, value = line.strip().partition(":")
        if name == gpu:
            return value.split("#", 1)[0].strip().strip("\"'")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", required=True, help="the card's name in the matrix, e.g. h100")
    parser.add_argument("--python", default=sys.executable, help="the Python holding torch")
    args = parser.parse_args(argv)

    _importable_module_utils()
    from ansible.module_utils.gpu_matrix import serves

    capability = _capability(args.gpu)
    if capability is None:
        print(f"gpu_smoke: {args.gpu!r} is not in the matrix's gpus", file=sys.stderr)
        return 2
    probe = "import json, torch; print(json.dumps([torch.__version__, torch.version.cuda]))"
    version, cuda = _python_json(args.python, probe)  # type: ignore[misc]
    expect = {
        "torch": version.split("+")[0],
        "cuda": ".".join(cuda.split(".")[:2]) if cuda else "cpu",
        "capability": capability,
    }
    spec = importlib.util.spec_from_file_location("test_image", SUITE)
    suite = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(suite)  # type: ignore[union-attr]
    suite.PY = args.python
    host, failed = LocalHost(), 0
    for name in CHECKS:
        check = getattr(suite, name)
        kwargs = {"host": host, "expect": expect}
        if "serves" in check.__code__.co_varnames[: check.__code__.co_argcount]:
            kwargs["serves"] = serves
        start = time.monotonic()
        try:
            check(**kwargs)
            print(f"PASSED {name} ({time.monotonic() - start:.1f} s)")
        except Exception:  # a check's failure is reported, and the others still run
            failed += 1
            print(f"FAILED {name}\n{traceback.format_exc(limit=2)}")
    try:
        print(json.dumps(figures(args.python), indent=1))
    except subprocess.CalledProcessError as err:
        failed += 1
        print(f"FAILED figures: {err.stderr[-2000:]}")
    print(f"{len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
