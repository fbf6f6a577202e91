"""Run ``docker buildx bake`` for the targets of a plan's bake file; say what became of each.

The bake file (module_utils/graph.py) holds the stale nodes only, grouped ``level1`` ..
``level3``; a child names its parent through the ``PARENT`` build arg (the parent's hash
tag), and where the builder has named contexts also through ``contexts``.

* Builders with named contexts (BuildKit >= 0.10): one call builds every target.
* Builders without (BuildKit 0.8): one call per level, parents first, so a child's
  ``FROM ${PARENT}`` finds the image the previous call loaded.
* Targets that need a build network (``network: host`` to reach loopback servers): bake
  files cannot carry it, so each target is built by ``docker buildx build`` with the same
  inputs, one at a time, parents first.

Every call streams ``--progress=plain`` into a log file of its own and writes a
``--metadata-file`` (parsed by bake_metadata). A call that fails tells nothing per target
(bake cancels the others and writes no metadata), so its targets are built again one at a
time (BuildKit's cache makes the finished steps free): each ends ``built``, ``failed`` (with
the tail of its own log, and ``cause``: the failing step and its last output lines, parsed
from the plain progress) or ``skipped`` (an ancestor failed). One failure never hides the
others' results.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ansible.module_utils.bake_metadata import BuildResult, read_metadata
from ansible.module_utils.gitsource import mask_url

# runner(argv, log path, timeout seconds) -> exit status (124 when it timed out)
Runner = Callable[[Sequence[str], Path, float], int]
TIMED_OUT = 124


@dataclass
class Outcome:
    target: str
    node: str
    level: int
    parent: str  # the parent's target id when the parent is in this bake file, else ""
    status: str = "pending"  # built | failed | skipped | planned
    reason: str = ""
    image_id: str = ""
    digest: str = ""
    tags: list[str] = field(default_factory=list)
    log: str = ""
    tail: list[str] = field(default_factory=list)
    cause: list[str] = field(default_factory=list)  # the failing step's last output lines
    seconds: float = 0.0


@dataclass
class Call:
    targets: list[str]
    argv: list[str]
    log: str
    rc: int = 0
    seconds: float = 0.0


def version_tuple(text: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def targets_of(bake: dict[str, Any]) -> dict[str, Outcome]:
    """Every target of the bake file with its level and its parent target, parents first."""
    specs = bake.get("target", {})
    levels: dict[str, int] = {}
    for group, body in bake.get("group", {}).items():
        m = re.fullmatch(r"level(\d+)", group)
        if m:
            for target in body.get("targets", []):
                levels[target] = int(m.group(1))
    by_tag = {tag: name for name, spec in specs.items() for tag in spec.get("tags", [])}
    out = {}
    for name, spec in specs.items():
        parent = by_tag.get(spec.get("args", {}).get("PARENT", ""), "")
        out[name] = Outcome(
            target=name,
            node=spec.get("labels", {}).get("io.aiclipse.node", name),
            level=levels.get(name, 0),
            parent=parent,
            tags=list(spec.get("tags", [])),
        )
    for item in out.values():  # targets outside the level groups: one below their parent
        if not item.level:
            depth, parent = 1, item.parent
            while parent:
                depth, parent = depth + 1, out[parent].parent
            item.level = depth
    return dict(sorted(out.items(), key=lambda kv: (kv[1].level, kv[0])))


def share(bake: dict[str, Any], nodes: Collection[str]) -> dict[str, Any]:
    """The bake file cut to the targets of ``nodes`` (one builder's share of the plan).

    A ``contexts`` link to a target outside the share is dropped: ``FROM ${PARENT}`` then
    names the parent's hash tag, which the builder that built it has pushed to the registry
    every builder shares, and this builder's engine pulls it from there."""
    wanted = set(nodes)
    targets = {
        name: dict(spec)
        for name, spec in bake.get("target", {}).items()
        if spec.get("labels", {}).get("io.aiclipse.node", name) in wanted
    }
    for spec in targets.values():
        contexts = {
            key: value
            for key, value in spec.get("contexts", {}).items()
            if not value.startswith("target:") or value.removeprefix("target:") in targets
        }
        if contexts:
            spec["contexts"] = contexts
        else:
            spec.pop("contexts", None)
    groups = {
        name: {**body, "targets": [t for t in body.get("targets", []) if t in targets]}
        for name, body in bake.get("group", {}).items()
    }
    return {**bake, "group": groups, "target": targets}


def batches(outcomes: dict[str, Outcome], named_contexts: bool) -> list[list[str]]:
    """One batch of everything with named contexts, else one batch per level."""
    if named_contexts:
        return [list(outcomes)] if outcomes else []
    levels: dict[int, list[str]] = {}
    for name, item in outcomes.items():
        levels.setdefault(item.level, []).append(name)
    return [levels[level] for level in sorted(levels)]


def entitlements(bake: dict[str, Any], buildx_version: str, extra: Sequence[str] = ()) -> list[str]:
    """``--allow`` values the bake file needs; only buildx >= 0.20 knows the flag for bake."""
    if version_tuple(buildx_version) < (0, 20):
        return []
    allow: list[str] = []
    specs = bake.get("target", {}).values()
    if any(spec.get("network") == "host" for spec in specs):
        allow.append("network.host")
    paths = set()
    for spec in specs:
        if spec.get("context"):
            paths.add(str(Path(spec["context"]).parent))
        for secret in spec.get("secret", []):
            src = dict(p.split("=", 1) for p in secret.split(",") if "=" in p).get("src")
            if src:
                paths.add(src)
    allow += [f"fs.read={path}" for path in sorted(paths)]
    return allow + [item for item in extra if item not in allow]


def bake_argv(
    bake_file: str,
    targets: Sequence[str],
    metadata: Path,
    allow: Sequence[str] = (),
    builder: str = "",
    docker: str = "docker",
) -> list[str]:
    argv = [docker, "buildx", "bake", "--file", bake_file, "--progress=plain"]
    argv += ["--metadata-file", str(metadata)]
    if builder:
        argv += ["--builder", builder]
    for item in allow:
        argv += ["--allow", item]
    return [*argv, *targets]


def needs_build_command(bake: dict[str, Any]) -> bool:
    """Bake files cannot set a build's network: buildx reads ``network`` from compose files
    only and drops it from JSON/HCL without a word (buildx 0.13.1 here; docker/buildx#863).
    Targets that need one are built with ``docker buildx build --network``, one at a time."""
    return any(spec.get("network") for spec in bake.get("target", {}).values())


def build_argv(
    spec: dict[str, Any],
    metadata: Path,
    builder: str = "",
    docker: str = "docker",
) -> list[str]:
    """``docker buildx build`` with the same inputs as the bake target ``spec``."""
    context = spec.get("context", ".")
    argv = [docker, "buildx", "build", "--progress=plain", "--metadata-file", str(metadata)]
    if builder:
        argv += ["--builder", builder]
    argv += ["--file", str(Path(context) / spec.get("dockerfile", "Dockerfile"))]
    for key, value in sorted(spec.get("args", {}).items()):
        argv += ["--build-arg", f"{key}={value}"]
    for tag in spec.get("tags", []):
        argv += ["--tag", tag]
    for key, value in sorted(spec.get("labels", {}).items()):
        argv += ["--label", f"{key}={value}"]
    for secret in spec.get("secret", []):
        argv += ["--secret", secret]
    for cache in spec.get("cache-from", []):
        argv += ["--cache-from", cache]
    for cache in spec.get("cache-to", []):
        argv += ["--cache-to", cache]
    for output in spec.get("output", []):
        argv += ["--output", output]
    if spec.get("target"):
        argv += ["--target", spec["target"]]
    if spec.get("network"):
        argv += ["--network", spec["network"]]
    # `contexts` (target:<parent>) exist only in bake; built level by level, the parent's
    # hash tag is already there for FROM ${PARENT}.
    return [*argv, context]


def tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]


def error_line(lines: Sequence[str]) -> str:
    """The most telling line of a failed build's log tail."""
    for line in reversed(lines):
        if line.startswith("ERROR:") or "ERROR:" in line:
            return line.strip()
    return lines[-1].strip() if lines else "no output"


_STEP = re.compile(r"^#(\d+) (\[.*)$")  # #12 [tiny-cpu 3/5] RUN python install_nodes.py
_STEP_ERROR = re.compile(r"^#(\d+) ERROR: (.*)$")
_STEP_OUTPUT = re.compile(r"^#(\d+) (\d+\.\d+) ?(.*)$")  # #12 0.532 <what the step printed>
_STEP_END = re.compile(r"^#(\d+) (DONE|CACHED|CANCELED)\b")
_EXIT = re.compile(r"exit code: (\d+)")
_NOISE = re.compile(r"━|\|[█▉▊▋▌▍▎▏ ]+\||^\s*[\d.]+\s*[kMG]?B\s*/\s*[\d.]+\s*[kMG]?B")
CAUSE_LINES = 12


def _meaningful(text: str) -> bool:
    return bool(text.strip()) and not _NOISE.search(text)


def _short(step: str, width: int = 120) -> str:
    step = " ".join(step.split())
    return step if len(step) <= width else step[: width - 3] + "..."


@dataclass(frozen=True)
class Cause:
    reason: str  # one line: the failing step, its exit code and its last meaningful line
    lines: list[str]  # that step's last meaningful output lines, timestamps dropped


def failure_cause(text: str, timed_out: bool = False) -> Cause | None:
    """Why a BuildKit ``--progress=plain`` build failed: the step of the first ``#N ERROR``
    (or, for a build that was killed, the last step that started and never ended), with
    the last lines that step printed (install_nodes.py's own lines name the node). None when
    the log names no step (an error before any step ran: the log's ERROR line says it)."""
    titles: dict[str, str] = {}
    output: dict[str, list[str]] = {}
    ended: set[str] = set()
    failed, error = "", ""
    for raw in text.splitlines():
        line = raw.rstrip()
        m = _STEP_ERROR.match(line)
        if m:
            if not failed:
                failed, error = m.group(1), m.group(2).strip()
            continue
        m = _STEP_OUTPUT.match(line)
        if m:
            if _meaningful(m.group(3)):
                output.setdefault(m.group(1), []).append(mask_url(m.group(3).strip()))
            continue
        m = _STEP_END.match(line)
        if m:
            ended.add(m.group(1))
            continue
        m = _STEP.match(line)
        if m:
            titles.setdefault(m.group(1), m.group(2))
    if not failed and timed_out:
        running = [n for n in titles if n not in ended]
        failed = running[-1] if running else ""
    if not failed:
        return None
    title = _short(mask_url(titles.get(failed, f"step #{failed}")))
    lines = output.get(failed, [])[-CAUSE_LINES:]
    last = lines[-1] if lines else ""
    code = _EXIT.search(error)
    if timed_out:
        reason = f"{title} did not finish" + (f": {last}" if last else "")
    elif code and last:
        reason = f"{title} failed (exit code {code.group(1)}): {last}"
    else:
        reason = f"{title}: {mask_url(error)}"
    return Cause(reason=reason, lines=lines)


def subprocess_runner(argv: Sequence[str], log: Path, timeout: float) -> int:
    """Run ``argv`` with stdout and stderr streamed into ``log``; kill its group on timeout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            out.write(f"\nERROR: timed out after {timeout:.0f}s\n".encode())
            return TIMED_OUT


@dataclass
class BakeReport:
    outcomes: dict[str, Outcome]
    calls: list[Call]
    plan_nodes: Sequence[dict[str, Any]] = ()
    only: Collection[str] | None = None  # this builder's share of the plan; None: all of it

    def results(self) -> dict[str, dict[str, Any]]:
        """Every node of the plan (os-base aside), in plan order: what the plan said
        (``cached``, ``skipped``) or what the build did (``built``, ``failed``, ``skipped``,
        ``planned``); then targets of the bake file the plan did not list."""
        by_node = {o.node: o for o in self.outcomes.values()}
        out: dict[str, dict[str, Any]] = {}
        for node in self.plan_nodes:
            name, status = node.get("name", ""), node.get("status", "")
            if status == "external" or (self.only is not None and name not in self.only):
                continue
            if name in by_node:
                out[name] = asdict(by_node[name])
            elif status == "stale":  # stale in the plan, absent from the bake file
                out[name] = asdict(Outcome("", name, node.get("level", 0), ""))
                out[name].update(status="planned", reason="not in the bake file")
            else:
                item = asdict(Outcome("", name, node.get("level", 0), ""))
                item.update(status=status, reason=node.get("reason", ""))
                item.update(digest=node.get("digest", ""), tags=[node.get("ref", "")])
                out[name] = item
        for outcome in self.outcomes.values():
            out.setdefault(outcome.node, asdict(outcome))
        return out

    def as_dict(self) -> dict[str, Any]:
        results = self.results()
        return {
            "outcomes": results,
            "built": [n for n, r in results.items() if r["status"] == "built"],
            "failed": [n for n, r in results.items() if r["status"] == "failed"],
            "skipped": [n for n, r in results.items() if r["status"] == "skipped"],
            "cached": [n for n, r in results.items() if r["status"] == "cached"],
            "calls": [asdict(c) for c in self.calls],
            "table": table(results),
        }


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """One line per node: status, node, image id (or registry digest), seconds, why."""
    rows = [("STATUS", "NODE", "IMAGE", "SECONDS", "WHY")]
    for name, item in results.items():
        image = (item.get("image_id") or item.get("digest") or "-").replace("sha256:", "")[:12]
        secs = f"{item['seconds']:.1f}" if item.get("seconds") else "-"
        rows.append((item["status"], name, image, secs, item.get("reason") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    ]


class Baker:
    """Runs the calls; ``runner`` and ``clock`` are parameters so tests need no engine."""

    def __init__(
        self,
        bake_file: str,
        bake: dict[str, Any],
        log_dir: Path,
        *,
        named_contexts: bool = False,
        allow: Sequence[str] = (),
        builder: str = "",
        timeout: float = 7200,
        tail_lines: int = 40,
        runner: Runner = subprocess_runner,
        clock: Callable[[], float] = time.monotonic,
        blocked: Mapping[str, str] | None = None,
        only: Collection[str] | None = None,
    ) -> None:
        self.bake_file, self.log_dir = bake_file, log_dir
        self.named_contexts, self.allow, self.builder = named_contexts, list(allow), builder
        self.timeout, self.tail_lines = timeout, tail_lines
        self.runner, self.clock = runner, clock
        self.bake = bake
        self.one_by_one = needs_build_command(bake)
        self.outcomes = targets_of(bake)
        self.calls: list[Call] = []
        self.only = only
        for item in self.outcomes.values():  # a parent another builder failed to make
            if blocked and item.node in blocked:
                item.status, item.reason = "skipped", blocked[item.node]

    def _call(self, targets: list[str], label: str) -> tuple[int, dict[str, BuildResult], Path]:
        log = self.log_dir / f"{label}.log"
        metadata = self.log_dir / f"{label}.metadata.json"
        metadata.unlink(missing_ok=True)
        if self.one_by_one:
            (target,) = targets
            argv = build_argv(self.bake["target"][target], metadata, self.builder)
        else:
            argv = bake_argv(self.bake_file, targets, metadata, self.allow, self.builder)
        start = self.clock()
        rc = self.runner(argv, log, self.timeout)
        call = Call(targets, argv, str(log), rc, round(self.clock() - start, 3))
        self.calls.append(call)
        if rc != 0:
            return rc, {}, log
        return rc, read_metadata(metadata, targets[0] if self.one_by_one else None), log

    def _blocked_by(self, name: str) -> str:
        parent = self.outcomes[name].parent
        while parent:
            if self.outcomes[parent].status in ("failed", "skipped"):
                return parent
            parent = self.outcomes[parent].parent
        return ""

    def _built(self, name: str, results: dict[str, BuildResult], log: Path, secs: float) -> None:
        item, result = self.outcomes[name], results.get(name)
        item.status, item.log, item.seconds = "built", str(log), secs
        if result is not None:
            item.image_id, item.digest = result.image_id, result.digest

    def _run(self, targets: list[str], label: str) -> None:
        todo = []
        for name in targets:
            if self.outcomes[name].status == "skipped":
                continue
            blocker = self._blocked_by(name)
            if blocker:
                item = self.outcomes[name]
                item.status = "skipped"
                item.reason = (
                    f"parent {self.outcomes[blocker].node} {self.outcomes[blocker].status}"
                )
            else:
                todo.append(name)
        if not todo:
            return
        rc, results, log = self._call(todo, label)
        seconds = self.calls[-1].seconds
        if rc == 0:
            for name in todo:
                self._built(name, results, log, seconds)
            return
        if len(todo) == 1:
            item = self.outcomes[todo[0]]
            item.status, item.log, item.seconds = "failed", str(log), seconds
            item.tail = tail(log, self.tail_lines)
            item.reason = (
                f"timed out after {self.timeout:.0f}s" if rc == TIMED_OUT else error_line(item.tail)
            )
            try:
                text = log.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                text = ""
            cause = failure_cause(text, timed_out=rc == TIMED_OUT)
            if cause is not None:
                item.cause = cause.lines
                item.reason = f"{item.reason}: {cause.reason}" if rc == TIMED_OUT else cause.reason
            return
        # The call failed as a whole: build its targets one at a time, parents first.
        for name in sorted(todo, key=lambda n: (self.outcomes[n].level, n)):
            self._run([name], f"{label}.{name}")

    def run(
        self, check_mode: bool = False, plan_nodes: Sequence[dict[str, Any]] = ()
    ) -> BakeReport:
        """Build every target (none: no call at all); in check mode build nothing."""
        if check_mode:
            for item in self.outcomes.values():
                item.status, item.reason = "planned", "check mode: not built"
            return BakeReport(self.outcomes, [], plan_nodes, self.only)
        if self.outcomes:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.one_by_one:  # docker buildx build: one target per call, parents first
            for name, item in self.outcomes.items():
                self._run([name], f"level{item.level}.{name}")
            return BakeReport(self.outcomes, self.calls, plan_nodes, self.only)
        for batch in batches(self.outcomes, self.named_contexts):
            label = "all" if self.named_contexts else f"level{self.outcomes[batch[0]].level}"
            self._run(batch, label)
        return BakeReport(self.outcomes, self.calls, plan_nodes, self.only)
