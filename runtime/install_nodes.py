#!/usr/bin/env python3
"""Install extra ComfyUI custom nodes at run time, from a nodes manifest on the volume.

Standard library plus git and pip; the manifest parser is the project's one parser.

* Commit-pinned lines only (``<git url>@<40-hex commit>``): a branch, tag or missing ref is
  refused before anything is touched, with ``file:line:column`` and the fix.
* One node at a time: cloned into a hidden folder beside ``custom_nodes/<name>``, checked
  out at its commit (``git rev-parse HEAD`` asserted), its ``requirements.txt`` installed with
  pip under the image's constraints (``PIP_CONSTRAINT``), then renamed into place. A node that
  fails never appears half-installed; every failure is reported and named.
* A node's ``install.py`` runs the way ComfyUI-Manager runs it (``execute_install_script``):
  after its requirements, ``<python> install.py`` with the node's folder as cwd and the
  environment plus ``COMFYUI_PATH``/``COMFYUI_FOLDERS_BASE_PATH`` (ComfyUI's folder) where
  unset. The installed distributions are compared before and after: an install.py that
  installs, removes or moves one fails the node, naming it with the difference (the image's
  packages are locked; a node's packages come from its requirements, under the constraints).
* A failure ends the output: each failed node's name with the last lines of the command that
  failed (git, pip, install.py), then its reason, so a build log's tail names it.
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
TAIL_LINES = 8  # of a failing command's output, at the end of the log (bake_run keeps 12)
INSTALL_SCRIPT = "install.py"
DEFAULT_COMFYUI = "/opt/ComfyUI"
PROTECTED = ("torch", "torchvision", "torchaudio")
DEFAULT_CONSTRAINTS = "/opt/aiclipse/constraints.txt"
DEFAULT_OVERRIDES = "/opt/aiclipse/package-overrides.json"
_REQ_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
MARKER_DIR = "aiclipse-nodes"  # under sys.prefix of the Python that gets the requirements


class NodeError(Exception):
    """One node cannot be installed; ``output``: the failing command's last lines."""

    def __init__(self, message: str, output: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.output = list(output)[-TAIL_LINES:]


def tail_lines(*texts: str) -> list[str]:
    """The last non-blank lines of a command's output (stderr after stdout)."""
    lines = [line.rstrip() for text in texts for line in (text or "").splitlines()]
    return [line for line in lines if line.strip()][-TAIL_LINES:]


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
        raise NodeError(
            f"git {args[0]} exited {done.returncode}: {last}", tail_lines(done.stdout, done.stderr)
        )
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

    def distributions(self) -> dict[str, str]:
        """Every installed distribution of this Python: canonical name -> version (versions
        joined with ',' where one name is installed twice)."""
        code = (
            "import json, importlib.metadata as m\n"
            "d = {}\n"
            "for x in m.distributions():\n"
            "    name = x.metadata['Name']\n"
            "    if name: d.setdefault(name, set()).add(x.version)\n"
            "print(json.dumps({k: sorted(v) for k, v in d.items()}))\n"
        )
        done = subprocess.run(
            [self.python, "-c", code], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise NodeError(
                f"cannot list the distributions of {self.python}",
                tail_lines(done.stdout, done.stderr),
            )
        found: dict[str, set[str]] = {}
        for name, versions in json.loads(done.stdout).items():
            found.setdefault(canonical(name), set()).update(versions)
        return {name: ",".join(sorted(v)) for name, v in sorted(found.items())}

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
            raise NodeError(
                f"its requirements cannot be resolved: {_pip_error(dry)}",
                tail_lines(dry.stdout, dry.stderr),
            )
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
    # The exclusions and replacements hold for what the requirements pull in, too (rembg or
    # transparent-background bring opencv-python, whose cv2/ clobbers the image's headless
    # one): such a distribution is dropped and the rest installed --no-deps at the versions
    # pip chose; a replacement the image lacks is installed in its place.
    exclude = set(pip.overrides.get("exclude", []))  # type: ignore[arg-type]
    replace: Mapping[str, str] = pip.overrides.get("replace", {})  # type: ignore[assignment]
    dropped = sorted(d for d in planned if d in exclude or d in replace)
    if dropped:
        keep = [f"{d}=={v}" for d, v in sorted(planned.items()) if d not in dropped]
        installed = pip.distributions()
        wanted = sorted(
            {replace[d] for d in dropped if d in replace and canonical(replace[d]) not in installed}
        )
        for args in (["--no-deps", *keep] if keep else [], wanted):
            if not args:
                continue
            done = pip.run("install", "--quiet", *args)
            if done.returncode != 0:
                raise NodeError(
                    f"pip install failed: {_pip_error(done)}", tail_lines(done.stdout, done.stderr)
                )
        after = pip.protected_versions()
        if after != before:
            raise NodeError(f"pip changed the torch trio: {before} -> {after}")
        return (
            f"{len(keep)} package(s) installed: "
            + ", ".join(keep)
            + f"; pulled in but left out (package_layers_exclude/_replace): {', '.join(dropped)}"
        )
    done = pip.run("install", "--quiet", "-r", str(requirements))
    if done.returncode != 0:
        raise NodeError(
            f"pip install failed: {_pip_error(done)}", tail_lines(done.stdout, done.stderr)
        )
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


def environment_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """What moved between two ``Pip.distributions()`` snapshots, one entry per distribution."""
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None:
            changes.append(f"installed {name}=={new}")
        elif new is None:
            changes.append(f"removed {name}=={old}")
        else:
            changes.append(f"moved {name} {old} -> {new}")
    return changes


def node_requirements(pip: Pip, work: Path, name: str) -> str:
    """Install the node's ``requirements.txt`` (the image's exclusions and replacements
    applied) under the constraints; the note says what went in."""
    req = work / "requirements.txt"
    if not req.exists():
        return "no requirements"
    with tempfile.TemporaryDirectory(prefix="aiclipse-req-") as tmp:
        effective, changes = overridden_requirements(req, pip.overrides, Path(tmp))
        return "; ".join([*changes, install_requirements(pip, effective, name)])


def script_env(base: Mapping[str, str], comfyui: Path) -> dict[str, str]:
    """ComfyUI-Manager's environment for install.py (manager_core.get_script_env): ours, with
    COMFYUI_PATH and COMFYUI_FOLDERS_BASE_PATH set to ComfyUI's folder where unset."""
    env = dict(base)
    env.setdefault("COMFYUI_PATH", str(comfyui))
    env.setdefault("COMFYUI_FOLDERS_BASE_PATH", str(comfyui))
    return env


def run_install_script(pip: Pip, work: Path, comfyui: Path, timeout: float = 1800) -> str:
    """Run the node's install.py as ComfyUI-Manager does (``<python> install.py``, cwd the
    node's folder), after its requirements. NodeError when it fails or when it changed the
    installed distributions (the difference and its last output lines with it)."""
    if not (work / INSTALL_SCRIPT).is_file():
        return ""
    env = script_env(pip.env, comfyui)
    env.pop("PIP_CONSTRAINT", None)
    if pip.constraints:  # any pip it runs is held to the image's versions, as ours are
        env["PIP_CONSTRAINT"] = pip.constraints
    before = pip.distributions()
    try:
        done = subprocess.run(
            [pip.python, INSTALL_SCRIPT],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout if isinstance(err.stdout, str) else (err.stdout or b"").decode()
        raise NodeError(
            f"{INSTALL_SCRIPT} did not finish in {timeout:g} s", tail_lines(out)
        ) from err
    output = tail_lines(done.stdout)
    changes = environment_changes(before, pip.distributions())
    if changes:
        raise NodeError(
            f"its {INSTALL_SCRIPT} changed the Python environment: {', '.join(changes)} "
            f"(exit {done.returncode}). The image's packages are locked: a node's packages come "
            "from its requirements.txt, under the constraints. Fix: drop the node, or pin a "
            f"commit whose {INSTALL_SCRIPT} installs nothing",
            output,
        )
    if done.returncode != 0:
        raise NodeError(f"{INSTALL_SCRIPT} exited {done.returncode}", output)
    return f"{INSTALL_SCRIPT} ran"


# --------------------------------------------------------------------------------------------
# One node


@dataclass
class Result:
    node: manifests.NodeEntry
    status: str  # present | installed | failed
    note: str = ""
    output: list[str] = field(default_factory=list)  # failed: the failing command's last lines


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
    comfyui: Path = Path(DEFAULT_COMFYUI),
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
    staging = fresh = None
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
        note = node_requirements(pip, work, node.name)
        if staging is not None:
            os.replace(staging, dest)  # install.py runs where Manager runs it: custom_nodes/<name>
            staging, fresh = None, dest
        script = run_install_script(pip, dest, comfyui)
        if fresh is not None or script:
            chown_tree(dest, owner)  # what install.py wrote too
        fresh = None
        note = "; ".join(part for part in (note, script) if part)
        markers.mkdir(parents=True, exist_ok=True)
        marker.write_text(
            json.dumps({"commit": commit, "requirements": requirements_digest(requirements)})
            + "\n",
            encoding="utf-8",
        )
        return Result(node, "installed", f"at {commit[:12]}; {note}")
    except NodeError as err:
        return Result(node, "failed", str(err), err.output)
    finally:
        for leftover in (staging, fresh):  # a node that failed is not left half-installed
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)


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
        "--comfyui",
        default=os.environ.get("COMFY_DIR") or DEFAULT_COMFYUI,
        help="ComfyUI's folder, for install.py's COMFYUI_PATH (default: $COMFY_DIR, else "
        "%(default)s)",
    )
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
        result = install_node(node, custom_nodes, pip, markers, owner, Path(args.comfyui))
        results.append(result)
        log(f"[{result.status}] {node.name} ({node.where}): {result.note}")
    failed = [r for r in results if r.status == "failed"]
    installed = sum(r.status == "installed" for r in results)
    log(
        f"{len(results) - len(failed) - installed} present, {installed} installed, "
        f"{len(failed)} failed" + (f": {', '.join(r.node.name for r in failed)}" if failed else "")
    )
    for result in failed:  # last, so that the tail of a build log names each one
        for out in result.output:
            log(f"{result.node.name} | {out}")
        log(f"FAILED {result.node.name} ({result.node.where}): {result.note}")
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
