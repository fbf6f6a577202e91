#!/usr/bin/env python3
"""Time the plan of every shipped template x 4 GPU targets (prints figures, no pass/fail).

Run with the project's virtualenv: ``.venv/bin/python bench/plan.py``. It starts a real
registry (Debian's docker-registry) on a free loopback port, makes a ComfyUI stand-in git
repository, plans once (cold: the package resolution runs against the real index), puts
every planned hash tag into the registry, then times warm plans where everything is cached:
the goal is under 2 s for 3 templates x 4 targets.

torch for the GPU targets comes from a wheelhouse of small stand-in wheels (the real CUDA
wheels are several GB and their index is not reachable here); the other packages resolve
against PyPI as in production.
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import ansible.module_utils  # noqa: E402

ansible.module_utils.__path__.append(str(REPO / "module_utils"))

from ansible.module_utils.config import load_config  # noqa: E402
from ansible.module_utils.graph import Settings, make_plan  # noqa: E402
from ansible.module_utils.package_layers import ResolveOptions  # noqa: E402
from ansible.module_utils.registry import Registry, parse_ref  # noqa: E402
from ansible.module_utils.templates import list_templates, load_template  # noqa: E402
from wheels import make_wheel  # noqa: E402

LAYERS = [
    {"name": "essentials", "specs": ["numpy", "pillow", "pyyaml", "tqdm", "safetensors"]},
    {"name": "extended", "specs": ["einops", "requests", "aiohttp", "psutil"]},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", *args],
        cwd=cwd, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def make_repo(path: Path, requirements: str) -> str:
    path.mkdir(parents=True)
    git("init", "-q", cwd=path)
    (path / "requirements.txt").write_text(requirements)
    git("add", "-A", cwd=path)
    git("commit", "-qm", "bench", cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def put_tag(listen: str, ref: str) -> None:
    """Give the registry a (tiny) manifest under ``ref``'s tag."""
    parsed = parse_ref(ref)
    base = f"http://{listen}/v2/{parsed.repository}"
    config = b"{}"
    digest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    req = urllib.request.Request(f"{base}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(req) as resp:
        location = resp.headers["Location"]
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(f"{location}{sep}digest={digest}", data=config, method="PUT")
    put.add_header("Content-Type", "application/octet-stream")
    urllib.request.urlopen(put).close()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest, "size": len(config)},
        "layers": [],
    }  # fmt: skip
    req = urllib.request.Request(
        f"{base}/manifests/{parsed.reference}", data=json.dumps(manifest).encode(), method="PUT"
    )
    req.add_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
    urllib.request.urlopen(req).close()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="aiclipse-bench-plan-"))
    listen = f"127.0.0.1:{free_port()}"
    (work / "registry.yml").write_text(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: "
        f"{work / 'data'}\nhttp:\n  addr: {listen}\n"
    )
    registry = subprocess.Popen(
        ["docker-registry", "serve", str(work / "registry.yml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://{listen}/v2/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        wheels = work / "wheels"
        make_wheel(wheels, "torch", "2.8.0", ("filelock",))
        make_wheel(wheels, "torch", "2.13.0", ("filelock",))
        comfy = make_repo(work / "comfyui", "torch\nnumpy\nsafetensors\naiohttp\n")
        manager = make_repo(work / "manager", "rich\ntoml\n")
        # torch alone: the stand-in wheelhouse has no torchvision/torchaudio (the family's
        # other members are left out on purpose, `none`)
        alone = {"torchvision": "none", "torchaudio": "none"}
        gpu = {"cuda": "12.8", "torch": "2.8.0", "torch_wheelhouse": str(wheels), **alone}
        config = load_config(
            {
                "registry": f"{listen}/bench",
                "os_base": {"source": "debootstrap", "suite": "bookworm", "mirror": "http://x"},
                "gpu_targets": {
                    "rtx4090": {**gpu, "torch_cuda_arch_list": "8.9"},
                    "rtx5090": {**gpu, "torch_cuda_arch_list": "12.0"},
                    "h100": {**gpu, "torch_cuda_arch_list": "9.0"},
                    "cpu": {
                        "cuda": "cpu",
                        "torch": "2.13.0",
                        "torch_wheelhouse": str(wheels),
                        **alone,
                    },
                },
                "package_layers": LAYERS,
                "comfyui": {"repo": f"file://{work / 'comfyui'}", "ref": comfy},
                "manager": {"repo": f"file://{work / 'manager'}", "ref": manager},
            }
        )
        names = list_templates(REPO / "templates")
        templates = [load_template(REPO / "templates", name) for name in names]
        settings = Settings(
            repo_root=REPO,
            build_dir=work / "build",
            os_base_ref=f"{listen}/bench/os-base@sha256:" + "0" * 64,
            cache_dir=work / "cache",
            resolve_options=ResolveOptions(cert="/etc/ssl/certs/ca-certificates.crt"),
        )
        client = Registry(listen)

        def lookup(ref: str) -> str | None:
            parsed = parse_ref(ref)
            return client.manifest_digest(parsed.repository, parsed.reference)

        start = time.perf_counter()
        cold = make_plan(config, templates, settings, lookup)
        cold_s = time.perf_counter() - start
        for node in cold.nodes[1:]:
            put_tag(listen, node.ref)
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            warm = make_plan(config, templates, settings, lookup)
            runs.append(time.perf_counter() - start)
        moved = [n.name for n, m in zip(cold.nodes, warm.nodes, strict=True) if n.hash != m.hash]
        if moved:
            raise SystemExit(f"hashes moved between two plans of the same inputs: {moved}")
        assert not warm.stale, (warm.stale[0].ref, lookup(warm.stale[0].ref))
        nodes = len(warm.nodes) - 1
        print(f"templates: {', '.join(names)}; targets: 4; nodes planned: {nodes}")
        print(f"cold plan (resolution against the index, nothing in the registry): {cold_s:.2f} s")
        print(
            f"warm plan, everything cached (registry answering, resolution cache warm): "
            f"median {statistics.median(runs):.3f} s, min {min(runs):.3f} s over {len(runs)} runs"
        )
        print(f"registry HEAD requests per warm plan: {nodes}")
        print("goal: warm plan < 2 s")
    finally:
        registry.terminate()
        registry.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
