"""package_layers against the real package index (runs only with AICLIPSE_NETWORK_TESTS=1).

Resolves a realistic ComfyUI-ish list in three layers for CPython 3.11 on
manylinux_2_28_x86_64, binary wheels only, with the host's pip configuration ignored, and
checks the zero-duplication invariants on the real graph.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from ansible.module_utils.package_layers import (
    ResolveOptions,
    assign_layers,
    constraints_text,
    resolve,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("AICLIPSE_NETWORK_TESTS") != "1",
    reason="needs the package index: set AICLIPSE_NETWORK_TESTS=1",
)

LAYERS = [
    (
        "essentials",
        [
            "numpy<2.3",
            "pillow",
            "scipy",
            "pyyaml",
            "tqdm",
            "safetensors",
            "einops",
            "requests",
            "aiohttp",
            "psutil",
            "packaging",
            "filelock",
        ],
    ),
    (
        "extended",
        [
            "transformers",
            "diffusers",
            "huggingface-hub",
            "opencv-python-headless",
            "sentencepiece",
            "protobuf",
            "pydantic",
            "rich",
            "loguru",
            "av",
        ],
    ),
    (
        "face",
        ["onnx", "scikit-image", "scikit-learn", "matplotlib", "albumentations", "shapely"],
    ),
]


def test_real_index_resolution_has_zero_overlap(tmp_path: Path) -> None:
    options = ResolveOptions(index_url="https://pypi.org/simple", cert=os.environ.get("PIP_CERT"))
    resolution = resolve(LAYERS, "3.11", "manylinux_2_28_x86_64", (), options, tmp_path)
    names = [d.name for d in resolution.dists]
    assert len(names) >= 40 and len(set(names)) == len(names)
    assert "torch" not in names
    assert all(d.sha256 and d.url.startswith("https://") for d in resolution.dists)

    layers = assign_layers(LAYERS, resolution)
    placed = [d.name for layer in layers for d in layer.dists]
    assert sorted(placed) == sorted(names)  # every report entry assigned exactly once
    for earlier, later in itertools.pairwise(layers):
        assert not (earlier.names & later.names)
    assert {"numpy", "pillow", "requests", "idna"} <= layers[0].names
    assert "transformers" in layers[1].names and "numpy" not in layers[1].names
    assert "scikit-image" in layers[2].names and "opencv-python-headless" not in layers[2].names
    assert len(constraints_text(layers).splitlines()) == len(names)

    # The second run is answered from the cache: pip is never started.
    cached = resolve(
        LAYERS,
        "3.11",
        "manylinux_2_28_x86_64",
        (),
        ResolveOptions(
            index_url="https://pypi.org/simple",
            cert=os.environ.get("PIP_CERT"),
            pip_command=("false",),
        ),
        tmp_path,
    )
    assert cached == resolution
