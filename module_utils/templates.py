"""Templates: ``templates/<name>/`` folders read and validated into frozen dataclasses.

A template is what one image adds on top of ``base-<gpu>``: models to fetch at start, custom
nodes pinned by commit, its own pip packages, ComfyUI arguments, example workflows and an
optional Dockerfile fragment. Layout (docs/formats.md, "Templates"):

* ``template.yml``: ``description`` (required), ``gpu_targets`` (list or ``all``),
  ``extra_packages``, ``comfy_args``, ``labels``; unknown keys are errors with file:line.
* ``models_manifest.txt``, ``nodes_manifest.txt`` (and the plan's ``nodes_manifest.lock``):
  parsed by ``manifests``, whose errors pass through untouched.
* ``workflows/*.json``: each must parse and look like a ComfyUI workflow (UI or API format).
* ``Dockerfile.fragment`` (optional): lines appended to the template image's Dockerfile.

``list_templates``, ``load_template`` and ``select_targets`` raise :class:`TemplateError`, whose
message names the file and line (or the option), what is wrong and the fix.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ansible.module_utils.manifests import (
    LockedNode,
    ModelEntry,
    NodeEntry,
    load_models,
    load_nodes,
    locked_nodes,
)
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

TEMPLATE_FILE = "template.yml"
MODELS_FILE = "models_manifest.txt"
NODES_FILE = "nodes_manifest.txt"
WORKFLOWS_DIR = "workflows"
FRAGMENT_FILE = "Dockerfile.fragment"
ALL_TARGETS = "all"
TEMPLATE_KEYS: tuple[str, ...] = (
    "description",
    "gpu_targets",
    "extra_packages",
    "comfy_args",
    "labels",
)
REQUIRED_KEYS: tuple[str, ...] = ("description",)

# Template and target names become image tags (<template>-<gpu>), as in config.py.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# OCI annotation / docker label keys: reverse-DNS style, no spaces.
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
# Dockerfile instructions a fragment may not hold: it extends the template stage, it does
# not start another one or replace how the image starts.
_FRAGMENT_FORBIDDEN = ("FROM", "ENTRYPOINT", "CMD")
_INSTRUCTION_RE = re.compile(r"^\s*([A-Za-z]+)\b")


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class TemplateIssue:
    """One problem: ``file:line:column: message; fix`` (file and line when there is one)."""

    message: str
    fix: str = ""
    file: str = ""
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        text = f"{self.message}; {self.fix}" if self.fix else self.message
        if not self.file:
            return text
        where = self.file
        if self.line:
            where += f":{self.line}" + (f":{self.column}" if self.column else "")
        return f"{where}: {text}"


class TemplateError(ValueError):
    """Every problem found in one template (or one target selection); one issue a line."""

    def __init__(self, issues: Iterable[TemplateIssue]):
        self.issues: tuple[TemplateIssue, ...] = tuple(issues)
        if not self.issues:
            raise ValueError("TemplateError needs at least one issue")
        super().__init__("\n".join(str(issue) for issue in self.issues))

    @classmethod
    def one(
        cls, message: str, fix: str = "", file: str = "", line: int = 0, column: int = 0
    ) -> TemplateError:
        return cls([TemplateIssue(message, fix, file, line, column)])

    # The first issue's fields, for callers that handle one problem at a time.
    @property
    def file(self) -> str:
        return self.issues[0].file

    @property
    def line(self) -> int:
        return self.issues[0].line

    @property
    def fix(self) -> str:
        return self.issues[0].fix


def _suggest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice: a prefix match first, then difflib."""
    prefixed = [c for c in choices if c.startswith(word) or word.startswith(c)]
    close = prefixed or difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class Template:
    """One template, validated. ``gpu_targets`` is a tuple of target names or ``"all"``."""

    name: str
    path: str
    description: str
    gpu_targets: tuple[str, ...] | str
    extra_packages: tuple[str, ...]
    comfy_args: str
    labels: tuple[tuple[str, str], ...]
    models: tuple[ModelEntry, ...]
    nodes: tuple[NodeEntry, ...]
    workflows: tuple[str, ...]
    fragment: str | None = field(default=None)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def models_manifest(self) -> str:
        return os.path.join(self.path, MODELS_FILE)

    @property
    def nodes_manifest(self) -> str:
        return os.path.join(self.path, NODES_FILE)

    def locked_nodes(self) -> list[LockedNode]:
        """Each node with its commit (manifest + lock), as the build installs them."""
        return locked_nodes(self.nodes_manifest)


# --------------------------------------------------------------------------------------------
# Finding templates


def list_templates(root: str | os.PathLike[str]) -> list[str]:
    """Names of the folders under ``root`` holding a template.yml, sorted.

    Names starting with ``_`` or ``.`` are skipped (drafts, editor and VCS folders).
    """
    base = Path(root)
    if not base.is_dir():
        raise TemplateError.one(
            f"templates folder '{root}' not found",
            "run from the repository root or pass the folder that holds templates/<name>/",
        )
    return sorted(
        entry.name
        for entry in base.iterdir()
        if entry.is_dir()
        and not entry.name.startswith(("_", "."))
        and (entry / TEMPLATE_FILE).is_file()
    )


def _unknown_template(root: str | os.PathLike[str], name: str) -> TemplateError:
    names = list_templates(root)
    shown = f"{str(root).rstrip('/')}/"
    listing = ", ".join(names) if names else "(none)"
    return TemplateError.one(
        f"unknown template '{name}'",
        f"templates in {shown}: {listing}{_suggest(name, names)}",
    )


def load_template(root: str | os.PathLike[str], name: str) -> Template:
    """Read and validate ``<root>/<name>/``; TemplateError or ManifestError on a problem."""
    if not _NAME_RE.fullmatch(name) or not (Path(root) / name / TEMPLATE_FILE).is_file():
        folder = Path(root) / name
        if _NAME_RE.fullmatch(name) and folder.is_dir():
            raise TemplateError.one(
                f"'{folder}' has no {TEMPLATE_FILE}",
                f"create {folder / TEMPLATE_FILE} with at least 'description:'",
                str(folder),
            )
        raise _unknown_template(root, name)
    folder = Path(root) / name
    settings = _load_settings(folder / TEMPLATE_FILE)
    models = tuple(load_models(_required_file(folder / MODELS_FILE)))
    nodes = tuple(load_nodes(_required_file(folder / NODES_FILE)))
    workflows = _load_workflows(folder)
    fragment = _load_fragment(folder / FRAGMENT_FILE)
    return Template(
        name=name,
        path=str(folder),
        models=models,
        nodes=nodes,
        workflows=workflows,
        fragment=fragment,
        **settings,
    )


def _required_file(path: Path) -> Path:
    if not path.is_file():
        raise TemplateError.one(
            f"{path.name} is missing",
            "create it (a file with only '#' comments is an empty manifest)",
            str(path),
        )
    return path


# --------------------------------------------------------------------------------------------
# template.yml


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TemplateError.one(
            f"not UTF-8 text ({err.reason})", "save as UTF-8", str(path)
        ) from err


def _load_settings(path: Path) -> dict[str, Any]:
    """template.yml -> the Template fields it sets; every problem reported at once."""
    source = str(path)
    loader = yaml.SafeLoader(_read_text(path))
    try:
        root = loader.get_single_node()
        if root is None:
            raise TemplateError.one(
                "empty file", "write at least 'description: <one line>'", source, 1
            )
        if not isinstance(root, yaml.MappingNode):
            raise TemplateError.one(
                "must be a mapping of settings",
                f"use keys: {', '.join(TEMPLATE_KEYS)}",
                source,
                root.start_mark.line + 1,
                root.start_mark.column + 1,
            )
        issues: list[TemplateIssue] = []
        values: dict[str, tuple[Any, yaml.Node]] = {}
        key_lines: dict[str, int] = {}
        for key_node, value_node in root.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line, column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key not in TEMPLATE_KEYS:
                shown = key if key is not None else "(not a plain key)"
                issues.append(
                    TemplateIssue(
                        f"unknown key '{shown}'",
                        f"allowed keys: {', '.join(TEMPLATE_KEYS)}"
                        + (_suggest(key, TEMPLATE_KEYS) if key else ""),
                        source,
                        line,
                        column,
                    )
                )
                continue
            if key in key_lines:
                issues.append(
                    TemplateIssue(
                        f"'{key}' given twice (first on line {key_lines[key]})",
                        "keep one",
                        source,
                        line,
                        column,
                    )
                )
                continue
            key_lines[key] = line
            values[key] = (loader.construct_object(value_node, deep=True), value_node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise TemplateError.one(
            f"invalid YAML ({getattr(err, 'problem', None) or err})",
            "fix the syntax (indentation, quoting)",
            source,
            mark.line + 1 if mark else 0,
            mark.column + 1 if mark else 0,
        ) from err
    finally:
        loader.dispose()

    for key in REQUIRED_KEYS:
        if key not in values:
            issues.append(
                TemplateIssue(
                    f"'{key}' is required and missing",
                    f"add '{key}: <one line saying what the image is for>'",
                    source,
                    1,
                )
            )
    settings: dict[str, Any] = {
        "description": "",
        "gpu_targets": ALL_TARGETS,
        "extra_packages": (),
        "comfy_args": "",
        "labels": (),
    }
    checkers = {
        "description": _check_description,
        "gpu_targets": _check_gpu_targets,
        "extra_packages": _check_extra_packages,
        "comfy_args": _check_comfy_args,
        "labels": _check_labels,
    }
    for key, (value, node) in values.items():
        here = _Here(source, node, key, issues)
        checked = checkers[key](value, here)
        if checked is not None:
            settings[key] = checked
    if issues:
        raise TemplateError(sorted(issues, key=lambda issue: (issue.line, issue.column)))
    return settings


class _Here:
    """Where a value sits (its YAML node), to report problems with file:line:column."""

    def __init__(self, source: str, node: yaml.Node, key: str, issues: list[TemplateIssue]):
        self.source, self.node, self.key, self.issues = source, node, key, issues

    def add(self, message: str, fix: str, node: yaml.Node | None = None) -> None:
        mark = (node or self.node).start_mark
        self.issues.append(
            TemplateIssue(
                f"{self.key}: {message}", fix, self.source, mark.line + 1, mark.column + 1
            )
        )

    def item(self, index: int) -> yaml.Node | None:
        """The node of list item ``index`` (for its line), or None."""
        if isinstance(self.node, yaml.SequenceNode) and index < len(self.node.value):
            return self.node.value[index]
        return None

    def entry(self, key: str, value: bool = False) -> yaml.Node | None:
        """The key (or value) node of mapping entry ``key``, or None."""
        if isinstance(self.node, yaml.MappingNode):
            for key_node, value_node in self.node.value:
                if getattr(key_node, "value", None) == key:
                    return value_node if value else key_node
        return None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_description(value: Any, here: _Here) -> str | None:
    if not isinstance(value, str) or not value.strip():
        here.add(
            f"must be a non-empty string, got {_type_name(value)} {value!r}",
            "write one line saying what the image is for",
        )
        return None
    return value.strip()


def _check_gpu_targets(value: Any, here: _Here) -> tuple[str, ...] | str | None:
    if value == ALL_TARGETS:
        return ALL_TARGETS
    if not isinstance(value, list):
        here.add(
            f"must be '{ALL_TARGETS}' or a list of target names, got {_type_name(value)} {value!r}",
            "write 'gpu_targets: all' or 'gpu_targets: [rtx4090, h100]'",
        )
        return None
    if not value:
        here.add("is an empty list", f"list at least one target, or write '{ALL_TARGETS}'")
        return None
    names: list[str] = []
    for index, item in enumerate(value):
        node = here.item(index)
        if not isinstance(item, str) or not _NAME_RE.fullmatch(item):
            here.add(
                f"{item!r} is not a target name",
                "use lower-case letters, digits, '-' and '_' (a name from gpu_targets)",
                node,
            )
        elif item == ALL_TARGETS:
            here.add(f"'{ALL_TARGETS}' inside a list", f"write 'gpu_targets: {ALL_TARGETS}'", node)
        elif item in names:
            here.add(f"'{item}' is listed twice", "list each target once", node)
        else:
            names.append(item)
    return tuple(names)


def _check_extra_packages(value: Any, here: _Here) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        here.add(
            f"must be a list of pip requirements, got {_type_name(value)} {value!r}",
            "write 'extra_packages: [\"insightface==0.7.3\"]'",
        )
        return None
    specs: list[str] = []
    seen: dict[str, str] = {}
    for index, item in enumerate(value):
        node = here.item(index)
        if not isinstance(item, str) or not item.strip():
            here.add(f"{item!r} is not a requirement string", 'quote it: "name==1.2"', node)
            continue
        try:
            requirement = Requirement(item)
        except InvalidRequirement as err:
            here.add(
                f"'{item}' is not a valid requirement ({err})", "write 'name[==version]'", node
            )
            continue
        if requirement.url:
            here.add(
                f"'{item}' installs from a URL",
                "publish the wheel to an index or a wheelhouse and name it by version",
                node,
            )
            continue
        key = canonicalize_name(requirement.name)
        if key in seen:
            here.add(
                f"'{requirement.name}' is requested twice ('{seen[key]}' and '{item}')",
                "keep one requirement per distribution",
                node,
            )
            continue
        seen[key] = item
        specs.append(item.strip())
    return tuple(specs)


def _check_comfy_args(value: Any, here: _Here) -> str | None:
    if value is None:
        return ""
    if not isinstance(value, str):
        here.add(
            f"must be a string, got {_type_name(value)} {value!r}",
            'quote the arguments: comfy_args: "--fast --preview-method auto"',
        )
        return None
    if "\n" in value.strip():
        here.add("spans several lines", "write the arguments on one line")
        return None
    try:
        shlex.split(value)
    except ValueError as err:
        here.add(f"cannot be split into arguments ({err})", "balance the quotes")
        return None
    return value.strip()


def _check_labels(value: Any, here: _Here) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return ()
    if not isinstance(value, dict):
        here.add(
            f"must be a mapping of label -> text, got {_type_name(value)} {value!r}",
            "write 'labels: {org.opencontainers.image.title: \"...\"}'",
        )
        return None
    pairs: list[tuple[str, str]] = []
    for key, text in value.items():
        if not isinstance(key, str) or not _LABEL_KEY_RE.fullmatch(key):
            here.add(
                f"{key!r} is not a label key",
                "use letters, digits, '.', '-', '_' and '/' (e.g. org.example.owner)",
                here.entry(key) if isinstance(key, str) else None,
            )
        elif not isinstance(text, str):
            here.add(
                f"'{key}' must be a string, got {_type_name(text)} {text!r}",
                "quote the value",
                here.entry(key, value=True),
            )
        else:
            pairs.append((key, text))
    return tuple(pairs)


# --------------------------------------------------------------------------------------------
# Workflows


def _load_workflows(folder: Path) -> tuple[str, ...]:
    """Relative paths of ``workflows/*.json``, each parsed and checked for a workflow shape."""
    directory = folder / WORKFLOWS_DIR
    if not directory.is_dir():
        return ()
    found: list[str] = []
    for path in sorted(directory.glob("*.json")):
        if not path.is_file():
            continue
        check_workflow_file(path)
        found.append(path.relative_to(folder).as_posix())
    return tuple(found)


def check_workflow_file(path: str | os.PathLike[str]) -> str:
    """Parse one workflow JSON and check its shape; returns ``"ui"`` or ``"api"``."""
    source = str(path)
    text = _read_text(Path(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise TemplateError.one(
            f"invalid JSON ({err.msg})",
            "export the workflow again from ComfyUI (Workflow > Export)",
            source,
            err.lineno,
            err.colno,
        ) from err
    problem = workflow_problem(data)
    if problem is not None:
        raise TemplateError.one(
            f"not a ComfyUI workflow: {problem}",
            "export it from ComfyUI: UI format (an object with 'nodes' and 'links' lists) "
            "or API format (an object of node id -> {class_type, inputs})",
            source,
        )
    return "ui" if isinstance(data, dict) and "nodes" in data else "api"


def workflow_problem(data: Any) -> str | None:
    """Why ``data`` is not a ComfyUI workflow (UI or API format), or None when it is one."""
    if not isinstance(data, dict):
        return f"the top level is a {_json_type(data)}, not an object"
    if "nodes" in data or "links" in data:
        return _ui_problem(data)
    if not data:
        return "the object is empty"
    return _api_problem(data)


def _json_type(value: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _ui_problem(data: dict[str, Any]) -> str | None:
    nodes, links = data.get("nodes"), data.get("links")
    if not isinstance(nodes, list):
        return "'nodes' must be a list"
    if not isinstance(links, list):
        return "'links' must be a list"
    ids: set[Any] = set()
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            return f"nodes[{index}] is a {_json_type(node)}, not an object"
        node_id, kind = node.get("id"), node.get("type")
        if isinstance(node_id, bool) or not isinstance(node_id, (int, str)):
            return f"nodes[{index}] has no 'id'"
        if not isinstance(kind, str) or not kind:
            return f"nodes[{index}] (id {node_id}) has no 'type'"
        if node_id in ids:
            return f"node id {node_id} is used twice"
        ids.add(node_id)
    for index, link in enumerate(links):
        if isinstance(link, list) and len(link) >= 5:
            ends = (link[1], link[3])
        elif isinstance(link, dict) and {"origin_id", "target_id"} <= link.keys():
            ends = (link["origin_id"], link["target_id"])
        else:
            return (
                f"links[{index}] is not [id, origin_id, origin_slot, target_id, target_slot, "
                "type] nor an object with origin_id and target_id"
            )
        for end in ends:
            if end not in ids:
                return f"links[{index}] refers to node {end}, which is not in 'nodes'"
    return None


def _api_problem(data: dict[str, Any]) -> str | None:
    for node_id, node in data.items():
        if not isinstance(node, dict):
            return f"'{node_id}' is a {_json_type(node)}, not a node object"
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            return f"node '{node_id}' has no 'class_type'"
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            return f"node '{node_id}' has no 'inputs' object"
        for name, value in inputs.items():
            # A link is [source node id, output slot]; the source must exist.
            if (
                isinstance(value, list)
                and len(value) == 2
                and isinstance(value[0], str)
                and isinstance(value[1], int)
                and value[0] not in data
            ):
                return f"input '{name}' of node '{node_id}' refers to node '{value[0]}', missing"
    return None


# --------------------------------------------------------------------------------------------
# Dockerfile fragment


def _load_fragment(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = _read_text(path)
    for number, raw in enumerate(text.splitlines(), start=1):
        match = _INSTRUCTION_RE.match(raw)
        if match and match.group(1).upper() in _FRAGMENT_FORBIDDEN:
            raise TemplateError.one(
                f"'{match.group(1).upper()}' is not allowed in a fragment",
                "a fragment adds steps to the template stage (RUN, ENV, COPY, ...); the base "
                "image and the start command come from the graph",
                str(path),
                number,
                match.start(1) + 1,
            )
    return text if text.strip() else None


# --------------------------------------------------------------------------------------------
# Targets


def select_targets(
    template: Template,
    available: Iterable[str],
    requested: str | Sequence[str] | None = None,
) -> list[str]:
    """The targets to build ``template`` for, in inventory order.

    ``available`` are the target names the inventory defines; ``requested`` narrows them
    (``-e gpu=rtx4090``, a comma-separated string or a list). Without a request: every
    available target the template supports (an error when that leaves none). A requested
    target the inventory does not define, or the template does not support, is an error that
    lists the valid ones.
    """
    defined = list(dict.fromkeys(available))
    if template.gpu_targets == ALL_TARGETS:
        supported = defined
    else:
        supported = [name for name in defined if name in template.gpu_targets]
    where = os.path.join(template.path, TEMPLATE_FILE)
    if requested is None:
        if not supported:
            raise TemplateError.one(
                f"template '{template.name}' supports {', '.join(template.gpu_targets)}; "
                f"the inventory defines none of them (it has: {', '.join(defined) or 'none'})",
                "add one of those targets to gpu_targets in the inventory, or extend the "
                f"template's gpu_targets in {where}",
            )
        return supported
    if isinstance(requested, str):
        wanted = [part.strip() for part in requested.split(",") if part.strip()]
    else:
        wanted = [str(part).strip() for part in requested]
    if not wanted:
        raise TemplateError.one(
            "gpu= is empty", f"name a target: {', '.join(supported) or '(none)'}"
        )
    issues: list[TemplateIssue] = []
    for name in wanted:
        if name not in defined:
            issues.append(
                TemplateIssue(
                    f"gpu '{name}' is not defined in the inventory",
                    f"targets for '{template.name}': {', '.join(supported) or '(none)'}"
                    + _suggest(name, supported or defined),
                )
            )
        elif name not in supported:
            issues.append(
                TemplateIssue(
                    f"template '{template.name}' does not support gpu '{name}'",
                    f"its targets: {', '.join(supported) or '(none)'} (gpu_targets in {where})",
                )
            )
    if issues:
        raise TemplateError(issues)
    chosen = set(wanted)
    return [name for name in defined if name in chosen]
