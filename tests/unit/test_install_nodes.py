"""install_nodes.py for real: nodes served by git daemon on loopback, a local wheelhouse.

A test venv gets a fake 'torch' 1.0 (a hand-made wheel), so "never moves torch" is checked
with pip's real resolver without downloading anything; pip reads only the wheelhouse
(PIP_NO_INDEX, PIP_FIND_LINKS).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import install_nodes
import pytest
from gitserver import GitServer, commit_all, git, make_repo

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


# install.py of the test nodes, as node packs write them (ComfyUI-Manager runs them after the
# requirements: `python install.py` in the node's folder)
INSTALL_SCRIPTS = {
    # writes a file beside itself; needs its requirement installed already
    "NodeScriptFile": (
        "import importlib.metadata, json, os\n"
        "with open('install-ran.jsonl', 'a') as out:\n"
        "    out.write(json.dumps({'cwd': os.getcwd(), 'comfyui': os.environ.get('COMFYUI_PATH'),\n"
        "        'base': os.environ.get('COMFYUI_FOLDERS_BASE_PATH'),\n"
        "        'tinydep': importlib.metadata.version('tinydep')}) + '\\n')\n"
    ),
    # installs a package of its own, behind the lock's back
    "NodeScriptPip": (
        "import subprocess, sys\n"
        "print('Installing otherdep for the node')\n"
        "subprocess.check_call([sys.executable, '-m', 'pip', 'install', 'otherdep==1.0'])\n"
    ),
    "NodeScriptFails": (
        "import sys\n"
        "print('downloading the weights')\n"
        "print('RuntimeError: no GPU found', file=sys.stderr)\n"
        "sys.exit(3)\n"
    ),
}


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
    make_wheel(folder, "otherdep", "1.0")
    # opencv's shape: a node's requirement pulls in the non-headless build the image excludes
    make_wheel(folder, "cv-full", "1.0")
    make_wheel(folder, "cv-headless", "1.0")
    make_wheel(folder, "pulls-cv", "1.0", ("cv-full", "tinydep"))
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
        "NodePullsCv": "pulls-cv\n",
        "NodeNoReqs": None,
        "NodeTorch": "pulls-torch\n",
        "NodeTorchPin": "torch==2.0\n",
        "NodeMissing": "does-not-exist==9.9\n",
        "NodeScriptFile": "tinydep==1.0\n",
        "NodeScriptPip": None,
        "NodeScriptFails": None,
    }
    for name, requirements in specs.items():
        folder = src / name
        folder.mkdir()
        (folder / "__init__.py").write_text(f"NODE_CLASS_MAPPINGS = {{}}  # {name}\n")
        if requirements is not None:
            (folder / "requirements.txt").write_text(requirements)
        if name in INSTALL_SCRIPTS:
            (folder / "install.py").write_text(INSTALL_SCRIPTS[name])
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


# ---------------------------------------------------------------------------------------------
# install.py, run as ComfyUI-Manager runs it


def failure_tail(out: str, name: str) -> list[str]:
    """The lines after the summary: what a build log's tail shows of a failed node."""
    lines = out.rstrip().splitlines()
    start = max(i for i, text in enumerate(lines) if " failed" in text and "present," in text)
    tail = lines[start + 1 :]
    assert tail[-1].startswith(f"FAILED {name} ("), out
    return tail


def test_install_py_runs_after_the_requirements_in_the_node_folder(tmp_path, venv, nodes, env):
    uninstall(venv, "tinydep")  # install.py imports it: it must be installed first
    comfyui = tmp_path / "ComfyUI"
    text = line(nodes, "NodeScriptFile")
    status, out, custom = run(tmp_path, venv, text, "--comfyui", str(comfyui))
    assert status == 0, out
    assert "[installed] NodeScriptFile" in out and "install.py ran" in out
    runs = (custom / "NodeScriptFile" / "install-ran.jsonl").read_text().splitlines()
    assert len(runs) == 1
    ran = json.loads(runs[0])
    # where Manager runs it: custom_nodes/<name>, not a staging folder; ComfyUI's folder in env
    assert ran == {
        "cwd": str(custom / "NodeScriptFile"),
        "comfyui": str(comfyui),
        "base": str(comfyui),
        "tinydep": "1.0",
    }
    # installed once: a node already there is not installed (nor its install.py run) again
    status, out, _ = run(tmp_path, venv, text, "--comfyui", str(comfyui))
    assert status == 0 and "[present] NodeScriptFile" in out, out
    assert len((custom / "NodeScriptFile" / "install-ran.jsonl").read_text().splitlines()) == 1


def test_install_py_that_installs_a_package_fails_naming_node_and_package(
    tmp_path, venv, nodes, env
):
    uninstall(venv, "otherdep")
    text = line(nodes, "NodeScriptPip") + line(nodes, "NodeNoReqs")
    try:
        status, out, custom = run(tmp_path, venv, text)
    finally:
        uninstall(venv, "otherdep")
    assert status == 1, out
    assert "[failed] NodeScriptPip" in out
    assert "install.py changed the Python environment: installed otherdep==1.0" in out
    assert "[installed] NodeNoReqs" in out  # the others still go in
    assert sorted(p.name for p in custom.iterdir()) == ["NodeNoReqs"]  # not left half-installed
    tail = failure_tail(out, "NodeScriptPip")
    assert "installed otherdep==1.0" in tail[-1]
    shown = tail[:-1]  # install.py's own last lines, each naming the node
    assert shown and all(x.startswith("NodeScriptPip | ") for x in shown)
    assert any("Successfully installed otherdep-1.0" in x for x in shown)


def test_install_py_that_fails_fails_the_node_with_its_last_lines(tmp_path, venv, nodes, env):
    status, out, custom = run(tmp_path, venv, line(nodes, "NodeScriptFails"))
    assert status == 1, out
    assert failure_tail(out, "NodeScriptFails") == [
        "NodeScriptFails | downloading the weights",
        "NodeScriptFails | RuntimeError: no GPU found",
        f"FAILED NodeScriptFails ({tmp_path / 'nodes_manifest.txt'}:1): install.py exited 3",
    ]
    assert not (custom / "NodeScriptFails").exists()


def test_every_failure_ends_the_output_naming_the_node(tmp_path, venv, nodes, env):
    text = line(nodes, "NodeMissing") + line(nodes, "NodeA", "0" * 40) + line(nodes, "NodeNoReqs")
    status, out, _ = run(tmp_path, venv, text)
    assert status == 1, out
    assert "0 present, 1 installed, 2 failed: NodeMissing, NodeA" in out
    tail = failure_tail(out, "NodeA")
    missing = [x for x in tail if x.startswith("NodeMissing | ")]
    assert any("does-not-exist" in x for x in missing)  # pip's own last lines
    assert any(x.startswith("FAILED NodeMissing (") for x in tail)
    assert tail[-1].startswith("FAILED NodeA (") and "git" in tail[-1]
    assert any(x.startswith("NodeA | ") for x in tail)  # git's own last lines


def test_environment_changes_name_every_distribution():
    before = {"a": "1.0", "b": "2.0", "c": "3.0"}
    after = {"a": "1.0", "b": "2.1", "d": "0.1"}
    assert install_nodes.environment_changes(before, after) == [
        "moved b 2.0 -> 2.1",
        "removed c==3.0",
        "installed d==0.1",
    ]
    assert install_nodes.environment_changes(before, dict(before)) == []


@pytest.mark.parametrize(
    ("overrides", "present", "absent"),
    [
        ({"exclude": ["cv-full"]}, ["pulls-cv", "tinydep"], ["cv-full", "cv-headless"]),
        ({"replace": {"cv-full": "cv-headless"}}, ["pulls-cv", "cv-headless"], ["cv-full"]),
    ],
)
def test_exclusions_hold_for_what_requirements_pull_in(
    tmp_path, venv, nodes, env, overrides, present, absent
):
    """The upstream tier: ComfyUI_essentials' dependencies pulled opencv-python in beside the
    image's headless build (cv2/ clobbered, KJNodes and VHS IMPORT FAILED)."""
    for dist in ("pulls-cv", "tinydep", "cv-full", "cv-headless"):
        uninstall(venv, dist)
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps(overrides))
    status, out, _ = run(tmp_path, venv, line(nodes, "NodePullsCv"), "--overrides", str(path))
    assert status == 0, out
    assert "pulled in but left out (package_layers_exclude/_replace): cv-full" in out, out
    assert [installed(venv, d) for d in present] == ["1.0"] * len(present)
    assert [installed(venv, d) for d in absent] == [None] * len(absent)
