"""What ComfyUI's own start log says about its nodes: which failed to import, and why.

Read line by line the way ComfyUI's nodes.py and main.py print them (Oct 2025):

* a failed module: ``logging.warning(traceback.format_exc())`` then ``Cannot import <path>
  module for custom nodes: <error>`` (``load_custom_node``, for custom nodes and for
  ComfyUI's own ``comfy_extras/`` and ``comfy_api_nodes/`` files alike); a module without
  nodes: ``Skip <path> module for custom nodes due to the lack of NODE_CLASS_MAPPINGS ...``;
  a V3 one: ``Error while calling comfy_entrypoint in <path>: <error>``;
* the ``Import times for custom nodes:`` block, ``   0.1 seconds (IMPORT FAILED): <path>``
  (the only place a custom node counts as loaded or not);
* ``WARNING: some comfy_extras/ nodes did not import correctly ...`` (or ``comfy_api_nodes/``)
  followed by ``IMPORT FAILED: <file>`` lines;
* ``Failed to execute startup-script: <script> / <error>`` and the ``Prestartup times for
  custom nodes:`` block with ``(PRESTARTUP FAILED)``;
* a traceback ending in an ``ImportError`` that no ``Cannot import`` line follows: a pack that
  loaded caught one of its own nodes failing to import (node-level) and printed it.

Each failure is keyed by what failed (a custom node's path, ``comfy_extras/<file>``,
``comfy_api_nodes/<file>``, ``<path>/prestartup_script.py``) and carries the log lines that
matter: the exception line of its traceback (or ComfyUI's own message) and where it was
raised. Standard library only: the image suite loads this file by path.
"""

from __future__ import annotations

import re

_CANNOT_RE = re.compile(r"Cannot import (\S.*?) module for custom nodes: (.*)$")
_SKIP_RE = re.compile(r"Skip (\S.*?) module for custom nodes due to the lack of (.*)$")
_ENTRYPOINT_RE = re.compile(
    r"(?:Error while calling comfy_entrypoint in (\S.*?): (.*)|"
    r"comfy_entrypoint in (\S.*?) (is not callable|did not return .*?), skipping\.)$"
)
_STARTUP_RE = re.compile(r"Failed to execute startup-script: (\S.*?) / (.*)$")
# Anchored at a line's start or after other text: ComfyUI-Manager's threads print without a
# newline ("FETCH DATA from: <url>") while the main thread logs, so a header or an entry can
# arrive glued to the end of their text (seen with the real Manager on a loaded builder).
_TIMES_RE = re.compile(
    r"(?:^|\s)\d+(?:\.\d+)? seconds( \((?:IMPORT|PRESTARTUP) FAILED\))?: (\S.*?)\s*$"
)
_BLOCK_RE = re.compile(r"(Import|Prestartup) times for custom nodes:\s*$")
_BUILTIN_RE = re.compile(r"^\s*IMPORT FAILED: (\S.*?)\s*$")
_WARNING_RE = re.compile(r"WARNING: some (comfy_extras|comfy_api_nodes)/ nodes did not import")
_FRAME_RE = re.compile(r'^\s*File "(.*?)", line (\d+)(?:, in .*)?$')
_CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_ENDS = ("Traceback (", "Cannot import ")
_IMPORT_ERRORS = ("ImportError", "ModuleNotFoundError")


class _Traceback:
    def __init__(self) -> None:
        self.frames: list[tuple[str, str, str]] = []  # (file, line, code)
        self.error = ""
        self.used = False
        self.cause: _Traceback | None = None  # the one this was raised while handling

    def use(self) -> None:
        tb: _Traceback | None = self
        while tb is not None:
            tb.used, tb = True, tb.cause

    def add(self, line: str) -> bool:
        """Take one line of the traceback; False when the line is past its end."""
        if self.error or not line.strip() or line.lstrip().startswith(_ENDS):
            return False  # the exception line (or a blank one, or ComfyUI's own) ends it
        frame = _FRAME_RE.match(line)
        if frame:
            self.frames.append((frame.group(1), frame.group(2), ""))
        elif line.startswith("    ") and self.frames and not self.frames[-1][2]:
            file, number, _ = self.frames[-1]
            self.frames[-1] = (file, number, line.strip())
        elif not line.startswith(" "):
            self.error = line.strip()  # the first unindented line: the exception raised
        return True

    def lines(self, where: str = "") -> list[str]:
        """The exception line, then the innermost frame under ``where`` (else the innermost)."""
        inside = [f for f in self.frames if where and (f[0] + "/").startswith(where + "/")]
        frames = inside or self.frames
        out = [self.error] if self.error else []
        if frames:
            file, number, code = frames[-1]
            out.append(f"at {file}:{number}" + (f": {code}" if code else ""))
        return out


def _pack_of(path: str) -> str:
    """The custom node a file belongs to (``.../custom_nodes/<name>``), or ``""``."""
    head, sep, tail = path.partition("/custom_nodes/")
    return f"{head}{sep}{tail.split('/', 1)[0]}" if sep and tail else ""


def _builtin_key(path: str) -> str:
    """``comfy_extras/<file>`` for a ComfyUI built-in node file's path, else the path."""
    parts = path.replace("\\", "/").rsplit("/", 2)
    if len(parts) == 3 and parts[1] in ("comfy_extras", "comfy_api_nodes"):
        return f"{parts[1]}/{parts[2]}"
    return path


def read(log: str) -> tuple[dict[str, list[str]], set[str]]:
    """``(failures, loaded)``: every failure with its lines, and the custom nodes ComfyUI
    listed as loaded in its ``Import times for custom nodes`` block."""
    failures: dict[str, list[str]] = {}
    loaded: set[str] = set()
    tracebacks: list[_Traceback] = []
    current: _Traceback | None = None
    chained = False  # the next traceback was raised while handling the last one
    block = ""  # import | prestartup | comfy_extras | comfy_api_nodes

    def fail(where: str, lines: list[str]) -> None:
        known = failures.setdefault(where, [])
        known += [line for line in lines if line not in known]

    def last_traceback(where: str, error: str) -> list[str]:
        for tb in reversed(tracebacks):
            if not tb.used:
                tb.use()
                return tb.lines(where) or [error]
        return [error]

    for raw in log.splitlines():
        line = raw.rstrip()
        if current is not None:
            if current.add(line):
                continue
            current = None
        if line.strip() == "Traceback (most recent call last):":
            current = _Traceback()
            if chained and tracebacks:
                current.cause = tracebacks[-1]
            tracebacks.append(current)
            chained = False
            continue
        if line.strip() in _CHAINED:
            chained = True
            continue
        if line.strip():
            chained = False
        header = _BLOCK_RE.search(line)
        if header:
            block = header.group(1).lower()
            continue
        warning = _WARNING_RE.search(line)
        if warning:
            block = warning.group(1)
            continue
        if (
            cannot := _CANNOT_RE.search(line)
            or _SKIP_RE.search(line)
            or _ENTRYPOINT_RE.search(line)
        ):
            groups = [g for g in cannot.groups() if g is not None]
            path, why = groups[0], groups[1]
            if cannot.re is _CANNOT_RE:
                lines = last_traceback(path, why)
            elif cannot.re is _SKIP_RE:
                lines = [f"no nodes: it lacks {why}"]
            else:
                lines = [f"comfy_entrypoint: {why}"]
            fail(_builtin_key(path), lines)
            continue
        startup = _STARTUP_RE.search(line)
        if startup:
            fail(startup.group(1), [startup.group(2).strip()])
            continue
        times = _TIMES_RE.search(line) if block in ("import", "prestartup") else None
        if times:
            path = times.group(2)
            if block == "prestartup":
                if times.group(1):
                    fail(f"{path}/prestartup_script.py", ["PRESTARTUP FAILED"])
            elif times.group(1):
                fail(path, [] if failures.get(path) else ["IMPORT FAILED (no error printed)"])
            else:
                loaded.add(path)
            continue
        builtin = _BUILTIN_RE.match(line) if block in ("comfy_extras", "comfy_api_nodes") else None
        if builtin:
            key = f"{block}/{builtin.group(1)}"
            fail(key, [] if failures.get(key) else ["IMPORT FAILED (no error printed)"])
            continue
        if line.strip() and block in ("import", "prestartup"):
            block = ""  # the block ended
    for tb in tracebacks:
        pack = next((_pack_of(f[0]) for f in reversed(tb.frames) if _pack_of(f[0])), "")
        if not tb.used and pack and tb.error.split(":", 1)[0].endswith(_IMPORT_ERRORS):
            fail(pack, ["a node of it failed to import: " + tb.error, *tb.lines(pack)[1:]])
    return failures, loaded


def failures(log: str) -> dict[str, list[str]]:
    """``{what failed: [the log lines that say why]}`` (see the module's docstring)."""
    return read(log)[0]


def loaded(log: str) -> set[str]:
    """The custom nodes' paths ComfyUI's ``Import times for custom nodes`` block lists as
    loaded (a path marked ``(IMPORT FAILED)`` is not)."""
    return read(log)[1]


def describe(found: dict[str, list[str]]) -> list[str]:
    """One line per failure, sorted: ``<what>: <line>; <line>``."""
    return [f"{where}: {'; '.join(lines)}" for where, lines in sorted(found.items())]
