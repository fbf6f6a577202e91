"""The Ansible side without Docker: module docs render, lock.yml locks branches to commits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gitserver import GitServer, commit_all, make_repo
from helpers import REPO, playbook, recap

MODULES = sorted(p.stem for p in (REPO / "library").glob("*.py"))


@pytest.mark.parametrize("name", MODULES)
def test_ansible_doc_renders_each_module(name):
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-M", str(REPO / "library"), name],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "EXAMPLES" in done.stdout and "RETURN VALUES" in done.stdout


def test_lock_playbook_pins_a_branch_and_is_idempotent(tmp_path):
    src = tmp_path / "node-src"
    src.mkdir()
    (src / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    node, first = make_repo(src, tmp_path / "git" / "my-node")
    tpl = tmp_path / "templates" / "t"
    (tpl / "workflows").mkdir(parents=True)
    (tpl / "template.yml").write_text("description: t\n")
    (tpl / "models_manifest.txt").write_text("")
    (tpl / "workflows" / "w.json").write_text('{"nodes": [], "links": []}')
    with GitServer(tmp_path / "git") as server:
        (tpl / "nodes_manifest.txt").write_text(f"{server.url('my-node')}@main\n")
        extra = {"template": "t", "aiclipse_templates_dir": str(tmp_path / "templates")}
        run = playbook("lock.yml", extra, "--check")
        assert run.returncode == 0, run.stdout[-3000:]
        assert not (tpl / "nodes_manifest.lock").exists()  # check mode writes nothing
        run = playbook("lock.yml", extra)
        assert run.returncode == 0, run.stdout[-3000:]
        assert f"{server.url('my-node')} main {first}" in (tpl / "nodes_manifest.lock").read_text()
        assert recap(playbook("lock.yml", extra).stdout)["localhost"]["changed"] == 0
        (src / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {'X': object}\n")
        (node / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {'X': object}\n")
        moved = commit_all(node, "move main")
        run = playbook("lock.yml", extra)
        assert recap(run.stdout)["localhost"]["changed"] == 1
        assert moved in (tpl / "nodes_manifest.lock").read_text()
