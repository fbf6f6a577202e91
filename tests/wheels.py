"""Make small, real wheel files for tests: a local wheelhouse pip can resolve offline."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(
    folder: Path, name: str, version: str, requires: tuple[str, ...] = (), files: dict | None = None
) -> Path:
    """A pure-Python ``py3-none-any`` wheel of ``name==version`` requiring ``requires``."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents = dict(files or {f"{dist}/__init__.py": f"__version__ = {version!r}\n"})
    contents[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {req}\n" for req in requires)
    )
    contents[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: aiclipse-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [_record_line(path, text.encode()) for path, text in contents.items()]
    record.append(f"{info}/RECORD,,")
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in contents.items():
            info_ = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            archive.writestr(info_, text)
        archive.writestr(
            zipfile.ZipInfo(f"{info}/RECORD", (2020, 1, 1, 0, 0, 0)), "\n".join(record) + "\n"
        )
    return wheel


TORCH_STANDIN = {
    "torch/__init__.py": "__version__ = '2.13.0+cpu'\nfrom . import cuda, version\n",
    "torch/version.py": "cuda = None\n",
    "torch/cuda.py": "def is_available():\n    return False\n",
}


def make_torch_standin(folder: Path, requires: tuple[str, ...] = ()) -> Path:
    """``torch==2.13.0+cpu`` that imports and answers what the verification asks of a CPU
    torch (``__version__``, ``version.cuda``, ``cuda.is_available()``): the real one is 183 MB.
    Beside it ``torchvision==0.28.0+cpu``: the plan pins a target's whole torch family."""
    make_wheel(  # its family (the matrix pairs torch 2.13.0 with torchvision 0.28.0, no audio)
        folder,
        "torchvision",
        "0.28.0+cpu",
        ("torch==2.13.0",),
        files={"torchvision/__init__.py": "__version__ = '0.28.0+cpu'\n"},
    )
    return make_wheel(folder, "torch", "2.13.0+cpu", requires, files=TORCH_STANDIN)
