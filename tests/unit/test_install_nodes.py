"""install_nodes.py for real: nodes served by git daemon on loopback, a local wheelhouse.

A test venv gets a fake 'torch' 1.0 (a hand-made wheel), so "never moves torch" is checked
with pip's real resolver without downloading anything; pip reads only the wheelhouse
(PIP_NO_INDEX, PIP_FIND_LINKS).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import install_nodes
import pytest
from gitserver import GitServer, commit_all, git, make_repo

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel: one module, METADATA, WHEEL, RECORD."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {req}\n" for req in requires)
    files = {
        f"{module}/__init__.py": f"__version__ = {version!r}\n",
        f"{dist_info}/METADATA": meta,
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheelhouse")
    make_wheel(folder, "torch", "1.0")
    make_wheel(folder, "torch", "2.0")
    make_wheel(folder, "tinydep", "1.0")
    make_wheel(folder, "pulls-torch", "1.0", ("torch>=2",))
    return folder


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheelhouse):
    """A venv (with pip, no setuptools) holding the fake torch 1.0."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", "-f", str(wheelhouse),
         "torch==1.0"],
        check=True,
    )  # fmt: skip
    return python


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Node repositories on a git daemon: {name: (url, commit)} plus the server."""
    root = tmp_path_factory.mktemp("git")
    src = tmp_path_factory.mktemp("src")
    found = {}
    specs = {
        "NodeA": "tinydep==1.0\n",
        "NodeNoReqs": None,
        "NodeTorch": "pulls-torch\n",
        "NodeTorchPin": "torch==2.0\n",
        "NodeMissing": "does-not-exist==9.9\n",
    }
    for name, requirements in specs.items():
        folder = src / name
        folder.mkdir()
        (folder / "__init__.py").write_text(f"NODE_CLASS_MAPPINGS = {{}}  # {name}\n")
        if requirements is not None:
            (folder / "requirements.txt").write_text(requirements)
        repo, commit = make_repo(folder, root / name)
        found[name] = (repo, commit)
    # NodeA gets a second commit (on main) so a node can be moved between commits.
    (root / "NodeA" / "extra.py").write_text("X = 2\n")
    second = commit_all(root / "NodeA", "second")
    with GitServer(root) as server:
        yield {
            "server": server,
            "commits": {name: commit for name, (_, commit) in found.items()},
            "second": second,
        }


@pytest.fixture
def env(monkeypatch, wheelhouse):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    monkeypatch.delenv("PIP_CONSTRAINT", raising=False)


def line(nodes, name: str, commit: str | None = None) -> str:
    return f"{nodes['server'].url(name)}@{commit or nodes['commits'][name]}\n"


def run(tmp_path, venv, text: str, *extra: str) -> tuple[int, str, Path]:
    manifest = tmp_path / "nodes_manifest.txt"
    manifest.write_text(text)
    custom = tmp_path / "custom_nodes"
    done = subprocess.run(
        [str(venv), str(RUNTIME / "install_nodes.py"), "--manifest", str(manifest),
         "--custom-nodes", str(custom), *extra],
        capture_output=True, text=True, timeout=300, check=False, env=dict(os.environ),
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr, custom


def installed(venv: Path, dist: str) -> str | None:
    done = subprocess.run(
        [str(venv), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def uninstall(venv: Path, dist: str) -> None:
    subprocess.run([str(venv), "-m", "pip", "uninstall", "-y", "-q", dist], check=False)


def test_pinned_node_is_cloned_and_its_requirements_installed(tmp_path, venv, nodes, env):
    uninstall(venv, "tinydep")
    text = line(nodes, "NodeA") + line(nodes, "NodeNoReqs")
    status, out, custom = run(tmp_path, venv, text)
    assert status == 0, out
    assert git(custom / "NodeA", "rev-parse", "HEAD") == nodes["commits"]["NodeA"]
    assert not (custom / "NodeA" / "extra.py").exists()  # the pinned commit, not main's tip
    assert installed(venv, "tinydep") == "1.0"
    assert installed(venv, "torch") == "1.0"
    assert "[installed] NodeA" in out and "tinydep==1.0" in out
    assert "[installed] NodeNoReqs" in out and "no requirements" in out
    assert sorted(p.name for p in custom.iterdir()) == ["NodeA", "NodeNoReqs"]  # no leftovers

    # Again: both skipped, nothing cloned or installed.
    status, out, _ = run(tmp_path, venv, text)
    assert status == 0, out
    assert "[present] NodeA" in out and "[present] NodeNoReqs" in out
    assert "2 present, 0 installed, 0 failed" in out

    # Pinned to another commit: the checkout moves there.
    status, out, _ = run(tmp_path, venv, line(nodes, "NodeA", nodes["second"]))
    assert status == 0, out
    assert git(custom / "NodeA", "rev-parse", "HEAD") == nodes["second"]
    assert (custom / "NodeA" / "extra.py").exists()


def test_fresh_environment_reinstalls_requirements_of_a_node_on_the_volume(
    tmp_path, venv, nodes, env
):
    status, out, _ = run(tmp_path, venv, line(nodes, "NodeA"))
    assert status == 0, out
    # A new container: same volume (custom_nodes), the venv lost the package and the marker.
    uninstall(venv, "tinydep")
    prefix = subprocess.check_output([str(venv), "-c", "import sys; print(sys.prefix)"], text=True)
    marker = Path(prefix.strip()) / "aiclipse-nodes" / "NodeA.json"
    marker.unlink()
    status, out, _ = run(tmp_path, venv, line(nodes, "NodeA"))
    assert status == 0, out
    assert "[installed] NodeA" in out
    assert installed(venv, "tinydep") == "1.0"


@pytest.mark.parametrize("ref", ["main", "v1.0", None])
def test_branches_and_tags_are_refused_with_file_and_line(tmp_path, venv, nodes, env, ref):
    url = nodes["server"].url("NodeA")
    text = (
        "# runtime nodes\n" + line(nodes, "NodeNoReqs") + (f"{url}@{ref}\n" if ref else url + "\n")
    )
    status, out, custom = run(tmp_path, venv, text)
    assert status == 2, out
    assert "nodes_manifest.txt:3:" in out
    assert "not pinned to a commit" in out and "40-hex commit" in out
    assert not custom.exists() or not any(custom.iterdir())  # nothing touched


@pytest.mark.parametrize("use_constraints", [True, False])
def test_a_node_that_would_move_torch_fails_naming_it(tmp_path, venv, nodes, env, use_constraints):
    extra = []
    if use_constraints:
        constraints = tmp_path / "constraints.txt"
        constraints.write_text("torch==1.0\n")
        extra = ["--constraints", str(constraints)]
    else:
        extra = ["--constraints", str(tmp_path / "absent.txt")]
    text = line(nodes, "NodeTorch") + line(nodes, "NodeTorchPin") + line(nodes, "NodeNoReqs")
    status, out, custom = run(tmp_path, venv, text, *extra)
    assert status == 1, out
    assert "[failed] NodeTorch " in out and "[failed] NodeTorchPin " in out
    if not use_constraints:
        assert "torch 1.0 -> 2.0" in out
    assert "[installed] NodeNoReqs" in out  # the others still go in
    assert "2 failed: NodeTorch, NodeTorchPin" in out
    assert installed(venv, "torch") == "1.0"
    assert installed(venv, "pulls-torch") is None
    assert sorted(p.name for p in custom.iterdir()) == ["NodeNoReqs"]  # no half-installed node


def test_unresolvable_requirements_fail_naming_the_node(tmp_path, venv, nodes, env):
    status, out, custom = run(tmp_path, venv, line(nodes, "NodeMissing"))
    assert status == 1, out
    assert "[failed] NodeMissing" in out and "does-not-exist" in out
    assert "1 failed: NodeMissing" in out
    assert not (custom / "NodeMissing").exists()


def test_unknown_commit_and_foreign_folder_fail(tmp_path, venv, nodes, env):
    custom = tmp_path / "custom_nodes"
    (custom / "NodeNoReqs").mkdir(parents=True)  # the user's own folder, not a checkout
    text = line(nodes, "NodeA", "0" * 40) + line(nodes, "NodeNoReqs")
    status, out, _ = run(tmp_path, venv, text)
    assert status == 1, out
    assert "[failed] NodeA" in out and "git" in out
    assert "[failed] NodeNoReqs" in out and "not a git checkout" in out
    assert not (custom / "NodeA").exists()


def test_pinned_nodes_refuses_every_unpinned_line(tmp_path):
    manifest = tmp_path / "m.txt"
    manifest.write_text("git://127.0.0.1:1/a@main\ngit://127.0.0.1:1/b@" + "a" * 40 + "\n"
                        "git://127.0.0.1:1/c\n")  # fmt: skip
    with pytest.raises(install_nodes.manifests.ManifestError) as err:
        install_nodes.pinned_nodes(str(manifest))
    assert [issue.line for issue in err.value.issues] == [1, 3]
