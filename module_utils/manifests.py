"""The one parser for a template's model and node manifests.

Used at plan time (Ansible modules import it as ``ansible.module_utils.manifests``) and inside
the image (copied verbatim beside ``download_models.py``, imported as ``manifests``), so it
uses the standard library only and imports nothing else from this project.

Formats (see docs/formats.md, "Manifests"):

* models manifest, one model a line:
  ``<folder> <url> [name=<file>] [sha256=<hex>] [size=<bytes>]``
* nodes manifest, one node a line: ``<git url>[@<commit|tag|branch>]``
* nodes lock (``nodes_manifest.lock`` beside the manifest): ``<url> <ref> <commit>``

``#`` starts a comment (a whole line, or after whitespace). Every problem is reported with
file, line, column, the offending text and the fix; a file's every bad line is reported at
once in one :class:`ManifestError`.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

# ComfyUI's model folders (folder_paths.py plus the folders popular node packs read).
MODEL_FOLDERS: tuple[str, ...] = (
    "audio_encoders",
    "checkpoints",
    "clip",
    "clip_vision",
    "configs",
    "controlnet",
    "diffusers",
    "diffusion_models",
    "embeddings",
    "gligen",
    "hypernetworks",
    "insightface",
    "ipadapter",
    "loras",
    "model_patches",
    "photomaker",
    "sams",
    "style_models",
    "text_encoders",
    "ultralytics",
    "unet",
    "upscale_models",
    "vae",
    "vae_approx",
)
MODEL_KEYS: tuple[str, ...] = ("name", "sha256", "size")
# Suffixes the downloader uses for its own files beside a model; a model may not take them.
RESERVED_SUFFIXES: tuple[str, ...] = (".part", ".aria2", ".lock")
LOCK_HEADER = (
    "# Written by the plan (manifests.lock_nodes); do not edit. One node a line:\n"
    "# <url> <ref as written in the manifest, HEAD when none> <40-hex commit>\n"
)
DEFAULT_REF = "HEAD"
MAX_NAME_BYTES = 255

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]+")
_TOKEN = re.compile(r"\S+")
_SCP_URL = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!//)")
_GIT_SCHEMES = ("https", "ssh", "git", "file")


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class ManifestIssue:
    """One problem at one place: ``file:line:column: message; fix``."""

    file: str
    line: int
    column: int
    message: str
    fix: str
    text: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.message}; {self.fix}" if self.fix else f"{where}: {self.message}"


class ManifestError(ValueError):
    """Every problem found in one or more manifests; ``str()`` is one issue a line."""

    def __init__(self, issues: Iterable[ManifestIssue]):
        self.issues: tuple[ManifestIssue, ...] = tuple(issues)
        if not self.issues:
            raise ValueError("ManifestError needs at least one issue")
        super().__init__("\n".join(str(issue) for issue in self.issues))

    # The first issue's fields, for callers that handle one problem at a time.
    @property
    def file(self) -> str:
        return self.issues[0].file

    @property
    def line(self) -> int:
        return self.issues[0].line

    @property
    def column(self) -> int:
        return self.issues[0].column

    @property
    def text(self) -> str:
        return self.issues[0].text

    @property
    def fix(self) -> str:
        return self.issues[0].fix


class _Issues:
    """Collects issues for one file; raises them all together."""

    def __init__(self, source: str):
        self.source = source
        self.items: list[ManifestIssue] = []

    def add(self, line: int, column: int, message: str, fix: str = "", text: str = "") -> None:
        self.items.append(ManifestIssue(self.source, line, column, message, fix, text))

    def raise_if_any(self) -> None:
        if self.items:
            raise ManifestError(sorted(self.items, key=lambda item: (item.line, item.column)))


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _tokens(raw: str) -> list[tuple[int, str]]:
    """(1-based column, token) for each token before a comment (``#`` at a token start)."""
    found: list[tuple[int, str]] = []
    for match in _TOKEN.finditer(raw):
        if match.group().startswith("#"):
            break
        found.append((match.start() + 1, match.group()))
    return found


def _lines(text: str) -> Iterator[tuple[int, str]]:
    yield from enumerate(text.splitlines(), start=1)


# --------------------------------------------------------------------------------------------
# Models manifest


@dataclass(frozen=True)
class ModelEntry:
    """One model: where it goes (``folder/name``) and where it comes from."""

    folder: str
    url: str
    name: str
    sha256: str | None = None
    size: int | None = None
    source: str = field(default="<string>", compare=False)
    line: int = field(default=0, compare=False)

    @property
    def dest(self) -> str:
        """Destination relative to the models directory."""
        return f"{self.folder}/{self.name}"

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def render(self) -> str:
        """The manifest line for this entry (parses back to an equal entry)."""
        parts = [self.folder, self.url]
        if self.name != default_model_name(self.url):
            parts.append(f"name={self.name}")
        if self.sha256 is not None:
            parts.append(f"sha256={self.sha256}")
        if self.size is not None:
            parts.append(f"size={self.size}")
        return " ".join(parts)


def default_model_name(url: str) -> str:
    """The file name a URL gives: its path's last segment, percent-decoded, query dropped."""
    path = urlsplit(url).path
    return unquote(path.rsplit("/", 1)[-1])


def model_name_problem(name: str) -> str | None:
    """Why ``name`` is not a safe file name for a model, or None when it is."""
    if not name:
        return "empty file name"
    if "/" in name or "\\" in name:
        return f"file name '{name}' contains a path separator"
    if name.startswith("."):
        return f"file name '{name}' is hidden or a relative path ('.' first)"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return f"file name {name!r} contains a control character"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"file name is longer than {MAX_NAME_BYTES} bytes"
    for suffix in RESERVED_SUFFIXES:
        if name.endswith(suffix):
            return f"file name '{name}' ends with '{suffix}', which the downloader uses"
    return None


def _url_problem(url: str) -> tuple[str, str] | None:
    """(message, fix) when ``url`` is not an acceptable model URL."""
    if any(ord(char) < 33 or ord(char) > 126 for char in url):
        return (
            f"URL '{url}' has a character outside printable ASCII",
            "percent-encode it (for example a space as %20)",
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as err:
        return f"malformed URL '{url}' ({err})", "write an http(s):// URL"
    if parts.scheme not in ("http", "https"):
        return (
            f"URL scheme '{parts.scheme or '(none)'}' is not supported",
            "use an http:// or https:// URL",
        )
    if not parts.hostname:
        return f"URL '{url}' has no host", "write https://<host>/<path>"
    if parts.username is not None or parts.password is not None:
        return (
            "URL carries credentials (user@ or user:password@)",
            "remove them; tokens come from HF_TOKEN / CIVITAI_TOKEN in the environment",
        )
    return None


def parse_models(text: str, source: str = "<string>") -> list[ModelEntry]:
    """Parse a models manifest; raise ManifestError listing every bad line."""
    issues = _Issues(source)
    entries: list[ModelEntry] = []
    first_seen: dict[str, int] = {}
    for number, raw in _lines(text):
        tokens = _tokens(raw)
        if not tokens:
            continue
        entry = _parse_model_line(number, raw, tokens, issues)
        if entry is None:
            continue
        if entry.dest in first_seen:
            issues.add(
                number,
                tokens[0][0],
                f"duplicate destination '{entry.dest}' (line {first_seen[entry.dest]} "
                f"and line {number})",
                "remove one of the lines or give one a different name=",
                raw.strip(),
            )
            continue
        first_seen[entry.dest] = number
        entries.append(entry)
    issues.raise_if_any()
    return entries


def _parse_model_line(
    number: int, raw: str, tokens: list[tuple[int, str]], issues: _Issues
) -> ModelEntry | None:
    before = len(issues.items)
    folder_col, folder = tokens[0]
    if folder not in MODEL_FOLDERS:
        hint = _suggest(folder, MODEL_FOLDERS)
        if "=" in folder or "://" in folder:
            message = f"line must start with a model folder, found '{folder}'"
        else:
            message = f"unknown model folder '{folder}'"
        issues.add(number, folder_col, message, f"use one of: {', '.join(MODEL_FOLDERS)}{hint}")
    if len(tokens) < 2:
        issues.add(
            number,
            len(raw.rstrip()) + 1,
            "missing URL",
            "write '<folder> <url> [name=<file>] [sha256=<hex>] [size=<bytes>]'",
            raw.strip(),
        )
        return None
    url_col, url = tokens[1]
    url_problem = _url_problem(url)
    if url_problem:
        issues.add(number, url_col, url_problem[0], url_problem[1], url)
    options: dict[str, tuple[int, str]] = {}
    for col, token in tokens[2:]:
        key, eq, value = token.partition("=")
        if not eq:
            issues.add(
                number,
                col,
                f"unexpected '{token}'",
                f"options are key=value with keys: {', '.join(MODEL_KEYS)}"
                " (a '#' comment needs a space before it)",
                token,
            )
            continue
        if key not in MODEL_KEYS:
            issues.add(
                number,
                col,
                f"unknown key '{key}'",
                f"use one of: {', '.join(MODEL_KEYS)}{_suggest(key, MODEL_KEYS)}",
                token,
            )
            continue
        if key in options:
            issues.add(
                number,
                col,
                f"'{key}=' given twice (first at column {options[key][0]})",
                "keep one",
                token,
            )
            continue
        options[key] = (col, value)
    name = None
    if "name" in options:
        col, value = options["name"]
        problem = model_name_problem(value)
        if problem:
            issues.add(number, col + 5, problem, "use a plain file name like 'model.safetensors'")
        else:
            name = value
    elif not url_problem:
        derived = default_model_name(url)
        problem = model_name_problem(derived)
        if problem:
            issues.add(
                number,
                url_col,
                f"cannot take a file name from the URL: {problem}",
                "add name=<file>",
                url,
            )
        else:
            name = derived
    sha256 = None
    if "sha256" in options:
        col, value = options["sha256"]
        if _HEX64.fullmatch(value):
            sha256 = value.lower()
        else:
            issues.add(
                number,
                col + 7,
                f"sha256 '{value}' is not 64 hex digits ({len(value)} characters)"
                if len(value) != 64
                else f"sha256 '{value}' is not hexadecimal",
                "paste the full SHA-256 (sha256sum <file>, or the file page on Hugging Face)",
                value,
            )
    size = None
    if "size" in options:
        col, value = options["size"]
        if _DIGITS.fullmatch(value) and int(value) > 0:
            size = int(value)
        else:
            issues.add(
                number,
                col + 5,
                f"size '{value}' is not a positive whole number of bytes",
                "write the exact size in bytes, for example size=2132625894",
                value,
            )
    if len(issues.items) != before or name is None:
        return None
    return ModelEntry(folder, url, name, sha256, size, issues.source, number)


def load_models(path: str | os.PathLike[str]) -> list[ModelEntry]:
    """Read and parse a models manifest file (errors name the path as given)."""
    return parse_models(_read(path), str(path))


def merge_models(*lists: Iterable[ModelEntry]) -> list[ModelEntry]:
    """Combine entries from several manifests.

    The same destination twice is allowed only when both lines ask for the same thing (URL,
    sha256 and size); the first is kept. Otherwise a ManifestError names both places.
    """
    merged: dict[str, ModelEntry] = {}
    issues: list[ManifestIssue] = []
    for entries in lists:
        for entry in entries:
            seen = merged.get(entry.dest)
            if seen is None:
                merged[entry.dest] = entry
            elif (seen.url, seen.sha256, seen.size) != (entry.url, entry.sha256, entry.size):
                issues.append(
                    ManifestIssue(
                        entry.source,
                        entry.line,
                        1,
                        f"destination '{entry.dest}' is also at {seen.where} with a different "
                        "URL, sha256 or size",
                        "keep one of the lines or give one a different name=",
                        entry.render(),
                    )
                )
    if issues:
        raise ManifestError(issues)
    return list(merged.values())


# --------------------------------------------------------------------------------------------
# Nodes manifest and lock


@dataclass(frozen=True)
class NodeEntry:
    """One custom node repository and the ref asked for (None: the remote's HEAD)."""

    url: str
    ref: str | None = None
    source: str = field(default="<string>", compare=False)
    line: int = field(default=0, compare=False)
    ref_column: int = field(default=0, compare=False)

    @property
    def name(self) -> str:
        """Directory name under custom_nodes/: the repository's last path segment."""
        return _repo_name(self.url)

    @property
    def key(self) -> str:
        """The repository, normalised (case-insensitive host, no '.git', no trailing '/')."""
        return _repo_key(self.url)

    @property
    def pinned(self) -> bool:
        """True when the ref is a full commit, which needs no lock entry."""
        return self.ref is not None and _HEX40.fullmatch(self.ref) is not None

    @property
    def lock_ref(self) -> str:
        return self.ref if self.ref is not None else DEFAULT_REF

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def render(self) -> str:
        return self.url if self.ref is None else f"{self.url}@{self.ref}"


@dataclass(frozen=True)
class LockedNode:
    """A node and the commit its ref resolved to."""

    node: NodeEntry
    commit: str

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def name(self) -> str:
        return self.node.name


@dataclass(frozen=True)
class LockResult:
    nodes: tuple[LockedNode, ...]
    path: str
    text: str
    changed: bool


def _split_git_url(url: str) -> tuple[str, str] | None:
    """(prefix up to the path, path) for a URL or scp-like address; None when neither."""
    if "://" in url:
        scheme, _, rest = url.partition("://")
        netloc, slash, path = rest.partition("/")
        return f"{scheme}://{netloc}", slash + path
    match = _SCP_URL.match(url)
    if match:
        return url[: match.end()], url[match.end() :]
    return None


def _repo_key(url: str) -> str:
    split = _split_git_url(url)
    if split is None:
        return url
    prefix, path = split
    path = path.rstrip("/")
    if path.endswith(".git"):
        path = path[:-4]
    return prefix.lower() + path


def _repo_name(url: str) -> str:
    split = _split_git_url(url)
    path = split[1] if split else url
    name = path.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return name[:-4] if name.endswith(".git") else name


def git_ref_problem(ref: str) -> str | None:
    """Why ``ref`` is not a valid git ref name (git check-ref-format, simplified)."""
    if not ref:
        return "empty ref after '@'"
    if any(ord(char) < 33 or ord(char) == 127 for char in ref):
        return f"ref {ref!r} contains a space or control character"
    bad = [char for char in "~^:?*[\\" if char in ref]
    if bad:
        return f"ref '{ref}' contains '{bad[0]}'"
    if ".." in ref or "@{" in ref or "//" in ref:
        return f"ref '{ref}' contains '..', '@{{' or '//'"
    if ref.startswith(("-", "/", ".")) or ref.endswith(("/", ".", ".lock")):
        return f"ref '{ref}' starts with '-', '/' or '.', or ends with '/', '.' or '.lock'"
    if "/." in ref:
        return f"ref '{ref}' has a component starting with '.'"
    return None


def _git_url_problem(url: str) -> tuple[str, str] | None:
    if any(ord(char) < 33 or ord(char) > 126 for char in url):
        return (
            f"git URL '{url}' has a character outside printable ASCII",
            "percent-encode it",
        )
    if "://" in url:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "http":
            return "plain http:// for a git repository", "use https://"
        if scheme not in _GIT_SCHEMES:
            return (
                f"git URL scheme '{scheme}' is not supported",
                f"use one of: {', '.join(s + '://' for s in _GIT_SCHEMES)} or git@host:path",
            )
        if scheme != "file" and not parts.hostname:
            return f"git URL '{url}' has no host", "write https://<host>/<owner>/<repo>"
        if parts.password is not None or (scheme == "https" and parts.username is not None):
            return (
                "git URL carries credentials",
                "remove them; use a credential helper or a deploy key on the builder",
            )
    elif not _SCP_URL.match(url):
        return (
            f"'{url}' is not a git URL",
            "write https://<host>/<owner>/<repo>[@<commit|tag|branch>]",
        )
    name = _repo_name(url)
    if not name or name.startswith(".") or name in ("..", "."):
        return (
            f"cannot take a directory name from '{url}'",
            "end the URL with the repository name",
        )
    return None


def parse_nodes(text: str, source: str = "<string>") -> list[NodeEntry]:
    """Parse a nodes manifest; raise ManifestError listing every bad line."""
    issues = _Issues(source)
    nodes: list[NodeEntry] = []
    by_key: dict[str, int] = {}
    by_name: dict[str, tuple[int, str]] = {}
    for number, raw in _lines(text):
        tokens = _tokens(raw)
        if not tokens:
            continue
        col, token = tokens[0]
        for extra_col, extra in tokens[1:]:
            issues.add(
                number,
                extra_col,
                f"unexpected '{extra}' after the URL",
                "write one '<git url>[@<ref>]' a line, with '@' before the ref, no spaces",
                extra,
            )
        split = _split_git_url(token)
        url, ref, ref_col = token, None, 0
        if split is not None:
            prefix, path = split
            at = path.rfind("@")
            if at >= 0:
                url = prefix + path[:at]
                ref = path[at + 1 :]
                ref_col = col + len(prefix) + at + 1
        problem = _git_url_problem(url)
        if problem:
            issues.add(number, col, problem[0], problem[1], token)
            continue
        if ref is not None:
            ref_problem = git_ref_problem(ref)
            if ref_problem:
                issues.add(
                    number,
                    ref_col,
                    ref_problem,
                    "write a full 40-hex commit, a tag or a branch name",
                    ref,
                )
                continue
        node = NodeEntry(url, ref, source, number, ref_col or col + len(token))
        if node.key in by_key:
            issues.add(
                number,
                col,
                f"repository '{url}' is listed twice (line {by_key[node.key]} and line {number})",
                "keep one line",
                token,
            )
            continue
        if node.name in by_name:
            other_line, other_url = by_name[node.name]
            issues.add(
                number,
                col,
                f"'{url}' and '{other_url}' (line {other_line}) would both install into "
                f"custom_nodes/{node.name}",
                "keep one of them",
                token,
            )
            continue
        by_key[node.key] = number
        by_name[node.name] = (number, url)
        nodes.append(node)
    issues.raise_if_any()
    return nodes


def load_nodes(path: str | os.PathLike[str]) -> list[NodeEntry]:
    return parse_nodes(_read(path), str(path))


def lock_path_for(manifest: str | os.PathLike[str]) -> Path:
    """``nodes_manifest.txt`` -> ``nodes_manifest.lock`` in the same directory."""
    return Path(manifest).with_suffix(".lock")


def parse_lock(text: str, source: str = "<string>") -> dict[str, tuple[str, str, int]]:
    """Lock lines -> {repository key: (ref, commit, line)}; ManifestError on a bad line."""
    issues = _Issues(source)
    entries: dict[str, tuple[str, str, int]] = {}
    for number, raw in _lines(text):
        tokens = _tokens(raw)
        if not tokens:
            continue
        if len(tokens) != 3:
            issues.add(
                number,
                tokens[0][0],
                f"expected 3 fields '<url> <ref> <commit>', found {len(tokens)}",
                "regenerate the lock with the plan",
                raw.strip(),
            )
            continue
        (_, url), (_, ref), (commit_col, commit) = tokens
        if not _HEX40.fullmatch(commit):
            issues.add(
                number,
                commit_col,
                f"commit '{commit}' is not 40 lower-case hex digits",
                "regenerate the lock with the plan",
                commit,
            )
            continue
        key = _repo_key(url)
        if key in entries:
            issues.add(
                number,
                1,
                f"'{url}' is locked twice (line {entries[key][2]})",
                "regenerate the lock",
                raw.strip(),
            )
            continue
        entries[key] = (ref, commit, number)
    issues.raise_if_any()
    return entries


LsRemote = Callable[[str, str], Mapping[str, str]]


def git_ls_remote(url: str, ref: str, timeout: float = 60.0) -> dict[str, str]:
    """``git ls-remote <url> <ref>`` as {refname: sha}; RuntimeError when git fails."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/true")
    try:
        done = subprocess.run(
            # The second pattern lists an annotated tag's commit (refs/tags/x^{}).
            ["git", "ls-remote", "--", url, ref, ref + "^{}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeError(f"git ls-remote failed: {err}") from err
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"git ls-remote exited {done.returncode}: {last}")
    refs: dict[str, str] = {}
    for line in done.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name:
            refs[name] = sha
    return refs


def resolve_ref(refs: Mapping[str, str], ref: str) -> str:
    """The commit ``ref`` names in ``refs`` (ls-remote output); LookupError when none or two.

    A peeled annotated tag (``refs/tags/x^{}``) wins over the tag object; a name that is both
    a tag and a branch is ambiguous and must be written as ``refs/tags/x`` or ``refs/heads/x``.
    """
    if ref == DEFAULT_REF or ref.startswith("refs/"):
        candidates = [ref]
    else:
        candidates = [f"refs/tags/{ref}", f"refs/heads/{ref}"]
    found: dict[str, str] = {}
    for name in candidates:
        sha = refs.get(f"{name}^{{}}") or refs.get(name)
        if sha:
            found[name] = sha.lower()
    if not found:
        raise LookupError(f"ref '{ref}' not found on the remote")
    if len(found) > 1 and len(set(found.values())) > 1:
        raise LookupError(
            f"ref '{ref}' is both a tag and a branch; write refs/tags/{ref} or refs/heads/{ref}"
        )
    sha = next(iter(found.values()))
    if not _HEX40.fullmatch(sha):
        raise LookupError(f"remote answered '{sha}' for '{ref}', not a 40-hex commit")
    return sha


def resolve_nodes(
    manifest: str | os.PathLike[str], ls_remote: LsRemote = git_ls_remote
) -> list[LockedNode]:
    """Resolve every node's ref to a commit (full 40-hex refs are taken as they are)."""
    nodes = load_nodes(manifest)
    issues = _Issues(str(manifest))
    locked: list[LockedNode] = []
    for node in nodes:
        if node.pinned:
            locked.append(LockedNode(node, str(node.ref)))
            continue
        try:
            commit = resolve_ref(ls_remote(node.url, node.lock_ref), node.lock_ref)
        except (LookupError, RuntimeError) as err:
            issues.add(
                node.line,
                node.ref_column,
                f"cannot resolve '{node.render()}': {err}",
                "check the URL and ref (an abbreviated commit must be written in full, "
                "40 hex digits)",
                node.render(),
            )
            continue
        locked.append(LockedNode(node, commit))
    issues.raise_if_any()
    return locked


def render_lock(locked: Iterable[LockedNode]) -> str:
    lines = [f"{item.node.url} {item.node.lock_ref} {item.commit}\n" for item in locked]
    return LOCK_HEADER + "".join(lines)


def lock_nodes(
    manifest: str | os.PathLike[str],
    ls_remote: LsRemote = git_ls_remote,
    lock: str | os.PathLike[str] | None = None,
    write: bool = True,
) -> LockResult:
    """Resolve every ref with ``git ls-remote`` and write the lock beside the manifest.

    The file is replaced atomically and only when its content changes (``changed``);
    ``write=False`` computes the result without touching the disk (Ansible's check mode).
    """
    locked = resolve_nodes(manifest, ls_remote)
    path = Path(lock) if lock is not None else lock_path_for(manifest)
    text = render_lock(locked)
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    changed = current != text
    if changed and write:
        _write_atomic(path, text)
    return LockResult(tuple(locked), str(path), text, changed)


def locked_nodes(
    manifest: str | os.PathLike[str], lock: str | os.PathLike[str] | None = None
) -> list[LockedNode]:
    """Each node with its commit, from the manifest and its lock (for the build).

    A branch, tag or default ref without a matching lock entry is an error naming the line;
    a full 40-hex ref needs no entry (and a lock entry that disagrees with it is an error).
    """
    nodes = load_nodes(manifest)
    path = Path(lock) if lock is not None else lock_path_for(manifest)
    try:
        entries = parse_lock(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        entries = {}
    issues = _Issues(str(manifest))
    locked: list[LockedNode] = []
    for node in nodes:
        entry = entries.get(node.key)
        if node.pinned:
            if entry and entry[1] != node.ref:
                issues.add(
                    node.line,
                    node.ref_column,
                    f"commit {node.ref} disagrees with {path}:{entry[2]} ({entry[1]})",
                    "regenerate the lock with the plan",
                    node.render(),
                )
                continue
            locked.append(LockedNode(node, str(node.ref)))
        elif entry is None or entry[0] != node.lock_ref:
            state = "not in" if entry is None else f"locked as '{entry[0]}' in"
            issues.add(
                node.line,
                node.ref_column,
                f"'{node.render()}' is {state} {path}",
                "run the plan to lock it (ansible-playbook build.yml --check writes the lock), "
                "or pin a full 40-hex commit",
                node.render(),
            )
        else:
            locked.append(LockedNode(node, entry[1]))
    issues.raise_if_any()
    return locked


# --------------------------------------------------------------------------------------------
# Files


def _read(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ManifestError(
            [ManifestIssue(str(path), 0, 0, "file not found", "check the path", str(path))]
        ) from err
    except UnicodeDecodeError as err:
        raise ManifestError(
            [ManifestIssue(str(path), 0, 0, f"not UTF-8 text ({err.reason})", "save as UTF-8")]
        ) from err
    except OSError as err:
        raise ManifestError(
            [
                ManifestIssue(
                    str(path),
                    0,
                    0,
                    f"cannot read: {err.strerror or err}",
                    "check the file's permissions (the runtime reads it as its own user)",
                )
            ]
        ) from err


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
