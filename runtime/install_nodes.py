#!/usr/bin/env python3
"""Install extra ComfyUI custom nodes at run time, from a nodes manifest on the volume.

Standard library plus git and pip; the manifest parser is the project's one parser.

* Commit-pinned lines only (``<git url>@<40-hex commit>``): a branch, tag or missing ref is
  refused before anything is touched, with ``file:line:column`` and the fix.
* One node at a time: cloned into a hidden folder beside ``custom_nodes/<name>``, checked
  out at its commit (``git rev-parse HEAD`` asserted), its ``requirements.txt`` installed with
  pip under the image's constraints (``PIP_CONSTRAINT``), then renamed into place. A node that
  fails never appears half-installed; every failure is reported and named.
* Torch is never moved: pip's ``--dry-run --report`` first; a node whose requirements would
  install or change torch, torchvision or torchaudio fails naming the node, and the versions
  are compared again after the install.
* A node already at its commit with its requirements installed in this Python environment is
  skipped (the marker lives in the environment, not on the volume: a fresh container with the
  same volume installs the requirements again, since they were in the old container's venv).

Exit status: 0 all installed or present, 1 some node failed (named), 2 manifest or usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:
    import manifests
except ImportError:  # run from the repository: the parser lives in module_utils/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))
    import manifests

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PROTECTED = ("torch", "torchvision", "torchaudio")
DEFAULT_CONSTRAINTS = "/opt/aiclipse/constraints.txt"
DEFAULT_OVERRIDES = "/opt/aiclipse/package-overrides.json"
_REQ_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
MARKER_DIR = "aiclipse-nodes"  # under sys.prefix of the Python that gets the requirements


class NodeError(Exception):
    pass


def log(message: str) -> None:
    print(message, flush=True)


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


# --------------------------------------------------------------------------------------------
# Manifest


def pinned_nodes(path: str) -> list[manifests.NodeEntry]:
    """The manifest's nodes; ManifestError naming every line that is not a full commit."""
    nodes = manifests.load_nodes(path)
    issues = [
        manifests.ManifestIssue(
            node.source,
            node.line,
            node.ref_column,
            f"'{node.render()}' is not pinned to a commit"
            + (f" ('{node.ref}' is a branch or tag)" if node.ref else ""),
            "write <url>@<full 40-hex commit> (git ls-remote <url> <ref> shows it); "
            "runtime installs take commits only",
            node.render(),
        )
        for node in nodes
        if not node.pinned
    ]
    if issues:
        raise manifests.ManifestError(issues)
    return nodes


# --------------------------------------------------------------------------------------------
# git


def git(*args: str, cwd: Path | None = None, timeout: float = 600) -> str:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/true")
    # Root installs into a folder the runtime user owns: tell git that is fine, for this call.
    argv = ["git", "-c", "safe.directory=*", "-c", "advice.detachedHead=false", *args]
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise NodeError(f"git {args[0]} failed: {err}") from err
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise NodeError(f"git {args[0]} exited {done.returncode}: {last}")
    return done.stdout.strip()


def head_of(path: Path) -> str | None:
    if not (path / ".git").exists():
        return None
    try:
        return git("rev-parse", "HEAD", cwd=path)
    except NodeError:
        return None


def checkout(path: Path, url: str, commit: str) -> None:
    """Fetch ``commit`` into the repository at ``path`` and check it out (detached)."""
    try:
        git("fetch", "--quiet", "--depth", "1", "origin", commit, cwd=path)
    except NodeError:
        # A server that refuses a fetch by commit id: fetch everything, then look it up.
        git("fetch", "--quiet", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*", cwd=path)
    git("checkout", "--quiet", "--force", "--detach", commit, cwd=path)
    head = git("rev-parse", "HEAD", cwd=path)
    if head != commit:
        raise NodeError(f"checked out {head}, expected {commit}")
    if (path / ".gitmodules").exists():
        git("submodule", "update", "--init", "--recursive", "--depth", "1", cwd=path)


def clone(url: str, commit: str, dest: Path) -> None:
    dest.mkdir(parents=True)
    git("init", "--quiet", cwd=dest)
    git("remote", "add", "origin", url, cwd=dest)
    checkout(dest, url, commit)


# --------------------------------------------------------------------------------------------
# pip


@dataclass(frozen=True)
class Pip:
    python: str
    constraints: str | None
    env: Mapping[str, str]
    overrides: Mapping[str, object] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        env.pop("PIP_CONSTRAINT", None)
        if self.constraints:
            env["PIP_CONSTRAINT"] = self.constraints
        argv = [self.python, "-m", "pip", *args, "--no-input", "--disable-pip-version-check"]
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def protected_versions(self) -> dict[str, str | None]:
        code = (
            "import json, importlib.metadata as m\n"
            "def v(n):\n"
            "    try: return m.version(n)\n"
            "    except m.PackageNotFoundError: return None\n"
            f"print(json.dumps({{n: v(n) for n in {list(PROTECTED)!r}}}))\n"
        )
        done = subprocess.run(
            [self.python, "-c", code], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise NodeError(f"cannot run {self.python}: {done.stderr.strip()[-300:]}")
        return json.loads(done.stdout)

    def prefix(self) -> Path:
        if Path(self.python).resolve() == Path(sys.executable).resolve():
            return Path(sys.prefix)
        done = subprocess.run(
            [self.python, "-c", "import sys; print(sys.prefix)"],
            capture_output=True,
            text=True,
            check=True,
        )
        return Path(done.stdout.strip())


def _pip_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line.strip() for line in lines if line.strip().lower().startswith("error")]
    return " / ".join((errors or lines or ["(no output)"])[-3:])


def install_requirements(pip: Pip, requirements: Path, name: str) -> str:
    """Install one node's requirements; refuse any change to the torch trio. Returns a note."""
    before = pip.protected_versions()
    with tempfile.TemporaryDirectory(prefix="aiclipse-pip-") as tmp:
        report_path = Path(tmp) / "report.json"
        dry = pip.run(
            "install", "--dry-run", "--quiet", "--report", str(report_path), "-r", str(requirements)
        )
        if dry.returncode != 0:
            raise NodeError(f"its requirements cannot be resolved: {_pip_error(dry)}")
        report = json.loads(report_path.read_text(encoding="utf-8"))
    planned = {
        canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in report.get("install", [])
    }
    moved = [
        f"{dist} {before[dist] or '(not installed)'} -> {planned[dist]}"
        for dist in PROTECTED
        if dist in planned
    ]
    if moved:
        raise NodeError(
            f"its requirements would change {', '.join(moved)}; torch is frozen in this image "
            "(drop the node, or use one that works with the installed torch)"
        )
    if not planned:
        return "requirements already satisfied"
    done = pip.run("install", "--quiet", "-r", str(requirements))
    if done.returncode != 0:
        raise NodeError(f"pip install failed: {_pip_error(done)}")
    after = pip.protected_versions()
    if after != before:
        raise NodeError(f"pip changed the torch trio: {before} -> {after}")
    return f"{len(planned)} package(s) installed: " + ", ".join(
        f"{dist}=={version}" for dist, version in sorted(planned.items())
    )


def load_overrides(path: str | None) -> dict[str, object]:
    """``package_layers_exclude``/``_replace`` as base-<gpu> wrote them (none when absent)."""
    if not path or not Path(path).is_file():
        return {"exclude": [], "replace": {}}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {
        "exclude": [canonical(n) for n in data.get("exclude", [])],
        "replace": {canonical(k): v for k, v in data.get("replace", {}).items()},
    }


def overridden_requirements(
    requirements: Path, overrides: Mapping[str, object], dest: Path
) -> tuple[Path, list[str]]:
    """The node's requirements with the image's exclusions and replacements applied.

    An excluded distribution (``opencv-python`` where ``opencv-python-headless`` owns
    ``cv2/``) is left out and a replaced one renamed, as in every package layer, so a node
    cannot bring a second owner of the same files. Returns the file to install and notes.
    """
    exclude = set(overrides.get("exclude", []))  # type: ignore[arg-type]
    replace: Mapping[str, str] = overrides.get("replace", {})  # type: ignore[assignment]
    if not exclude and not replace:
        return requirements, []
    lines, notes = [], []
    for raw in requirements.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        match = _REQ_NAME_RE.match(line) if line and not line.startswith(("#", "-")) else None
        if match:
            name = canonical(match.group(0))
            if name in exclude:
                notes.append(f"{match.group(0)} left out (package_layers_exclude)")
                continue
            if name in replace:
                notes.append(f"{match.group(0)} -> {replace[name]} (package_layers_replace)")
                line = replace[name] + line[match.end() :]
        lines.append(line if match else raw)
    out = dest / "requirements.txt"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out, notes


def requirements_digest(path: Path) -> str:
    if not path.exists():
        return "none"
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# One node


@dataclass
class Result:
    node: manifests.NodeEntry
    status: str  # present | installed | failed
    note: str = ""


def chown_tree(path: Path, owner: tuple[int, int] | None) -> None:
    if owner is None or os.geteuid() != 0:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), *owner)
    os.lchown(path, *owner)


def install_node(
    node: manifests.NodeEntry,
    custom_nodes: Path,
    pip: Pip,
    markers: Path,
    owner: tuple[int, int] | None,
) -> Result:
    commit = str(node.ref)
    dest = custom_nodes / node.name
    marker = markers / f"{node.name}.json"
    requirements = dest / "requirements.txt"
    head = head_of(dest)
    if dest.exists() and head is None:
        return Result(
            node, "failed", f"{dest} exists and is not a git checkout; move it away to install it"
        )
    if head == commit:
        try:
            done = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            done = {}
        if done.get("commit") == commit and done.get("requirements") == requirements_digest(
            requirements
        ):
            return Result(node, "present", f"at {commit[:12]}, requirements installed")
    staging = None
    try:
        if head is None:
            staging = custom_nodes / f".{node.name}.installing-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            clone(node.url, commit, staging)
            work = staging
        else:
            remote = git("remote", "get-url", "origin", cwd=dest)
            if manifests.NodeEntry(remote).key != node.key:
                return Result(
                    node, "failed", f"{dest} is a checkout of {remote}, not {node.url}; move it"
                )
            if git("status", "--porcelain", "--untracked-files=no", cwd=dest):
                return Result(
                    node, "failed", f"{dest} has local changes; commit or discard them first"
                )
            checkout(dest, node.url, commit)
            work = dest
        req = work / "requirements.txt"
        note = "no requirements"
        if req.exists():
            with tempfile.TemporaryDirectory(prefix="aiclipse-req-") as tmp:
                effective, changes = overridden_requirements(req, pip.overrides, Path(tmp))
                note = "; ".join([*changes, install_requirements(pip, effective, node.name)])
        if staging is not None:
            chown_tree(staging, owner)
            os.replace(staging, dest)
            staging = None
        markers.mkdir(parents=True, exist_ok=True)
        marker.write_text(
            json.dumps({"commit": commit, "requirements": requirements_digest(requirements)})
            + "\n",
            encoding="utf-8",
        )
        return Result(node, "installed", f"at {commit[:12]}; {note}")
    except NodeError as err:
        return Result(node, "failed", str(err))
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Main


def parse_owner(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    uid, _, gid = text.partition(":")
    return int(uid), int(gid or uid)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="nodes manifest (commit-pinned lines)")
    parser.add_argument("--custom-nodes", default="/workspace/aiclipse/custom_nodes")
    parser.add_argument(
        "--python", default=sys.executable, help="the Python whose environment gets the packages"
    )
    parser.add_argument(
        "--constraints",
        default=os.environ.get("PIP_CONSTRAINT") or DEFAULT_CONSTRAINTS,
        help="pip constraints file (default: $PIP_CONSTRAINT, else %(default)s)",
    )
    parser.add_argument("--owner", help="UID:GID to own installed nodes (when run as root)")
    parser.add_argument(
        "--overrides",
        default=DEFAULT_OVERRIDES,
        help="the image's package_layers_exclude/_replace as JSON (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        nodes = pinned_nodes(args.manifest)
    except manifests.ManifestError as err:
        log(str(err))
        return EXIT_USAGE
    constraints = args.constraints if Path(args.constraints).is_file() else None
    pip = Pip(args.python, constraints, dict(os.environ), load_overrides(args.overrides))
    custom_nodes = Path(args.custom_nodes)
    custom_nodes.mkdir(parents=True, exist_ok=True)
    markers = pip.prefix() / MARKER_DIR
    owner = parse_owner(args.owner)
    log(
        f"{len(nodes)} node(s) from {args.manifest} into {custom_nodes} "
        f"(constraints: {constraints or 'none'})"
    )
    results = []
    for node in nodes:
        result = install_node(node, custom_nodes, pip, markers, owner)
        results.append(result)
        log(f"[{result.status}] {node.name} ({node.where}): {result.note}")
    failed = [r for r in results if r.status == "failed"]
    installed = sum(r.status == "installed" for r in results)
    log(
        f"{len(results) - len(failed) - installed} present, {installed} installed, "
        f"{len(failed)} failed" + (f": {', '.join(r.node.name for r in failed)}" if failed else "")
    )
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
