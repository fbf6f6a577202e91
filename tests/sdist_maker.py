"""Make small, real sdists for tests: buildable offline (an in-tree PEP 517 backend that
needs nothing from an index), so pip can prepare their metadata and build their wheels."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

BACKEND = '''\
"""A PEP 517 backend in the sdist itself: builds a py3-none-any wheel of the package."""
import base64, hashlib, os, zipfile

NAME, VERSION, REQUIRES = {name!r}, {version!r}, {requires!r}
DIST = NAME.replace("-", "_")
INFO = f"{{DIST}}-{{VERSION}}.dist-info"
FAIL = {fail!r}


def _metadata():
    lines = ["Metadata-Version: 2.1", f"Name: {{NAME}}", f"Version: {{VERSION}}"]
    return "\\n".join(lines + [f"Requires-Dist: {{r}}" for r in REQUIRES]) + "\\n"


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    os.makedirs(os.path.join(metadata_directory, INFO))
    with open(os.path.join(metadata_directory, INFO, "METADATA"), "w") as handle:
        handle.write(_metadata())
    return INFO


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    if FAIL:
        raise SystemExit("src/native.c:1:10: fatal error: " + FAIL)
    files = {{
        f"{{DIST}}/__init__.py": f"__version__ = {{VERSION!r}}\\n",
        f"{{INFO}}/METADATA": _metadata(),
        f"{{INFO}}/WHEEL": "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\n"
        "Tag: py3-none-any\\n",
    }}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{{path}},sha256={{digest.decode()}},{{len(text.encode())}}")
    record.append(f"{{INFO}}/RECORD,,")
    name = f"{{DIST}}-{{VERSION}}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{{INFO}}/RECORD", "\\n".join(record) + "\\n")
    return name
'''

PYPROJECT = """\
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]
"""


def make_sdist(
    folder: Path, name: str, version: str, requires: tuple[str, ...] = (), fail: str = ""
) -> Path:
    """``<name>-<version>.tar.gz``: an sdist whose wheel needs no compiler and no index;
    ``fail`` makes its build fail with that line, as a compiler's error would."""
    dist = name.replace("-", "_")
    root = f"{dist}-{version}"
    pkg_info = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    files = {
        f"{root}/PKG-INFO": pkg_info,
        f"{root}/pyproject.toml": PYPROJECT,
        f"{root}/backend.py": BACKEND.format(
            name=name, version=version, requires=list(requires), fail=fail
        ),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{root}.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        for member, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(member)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    return path
