"""A source or index that accepts the connection and never answers: the plan's git and pip
calls give up within the timeout and name the URL (without its credentials) and the fix."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from ansible.module_utils.gitsource import (
    SourceUnreachable,
    ensure_commit,
    follow,
    mask_url,
    network_env,
)
from ansible.module_utils.package_layers import (
    ResolveError,
    ResolveOptions,
    index_message,
    resolve,
    unreachable_indexes,
)

TIMEOUT = 3.0
MARGIN = 10.0  # process start-up, git's and pip's own start


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback TCP server that accepts every connection, reads, and never writes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            held.append(conn)  # kept open, never answered

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def test_mask_url_hides_credentials_only():
    assert mask_url("https://user:tok@host/x and ssh://git@h/y") == (
        "https://***@host/x and ssh://***@h/y"
    )
    assert mask_url("https://host/a@b") == "https://host/a@b"  # an @ in the path stays


def test_network_env_bounds_http_and_ssh_and_keeps_a_users_ssh_command():
    env = network_env(30, {"GIT_SSH_COMMAND": "ssh -i /k"})
    assert env["GIT_HTTP_LOW_SPEED_TIME"] == "30" and env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_SSH_COMMAND"].startswith("ssh -i /k -o BatchMode=yes -o ConnectTimeout=30")


def test_git_fetch_of_a_silent_http_server_names_the_repo_within_the_timeout(tmp_path, silent_port):
    url = f"http://user:secret@127.0.0.1:{silent_port}/ComfyUI.git"
    start = time.monotonic()
    with pytest.raises(SourceUnreachable) as info:
        ensure_commit(tmp_path / "cache", url, "a" * 40, "comfyui.repo", timeout=TIMEOUT)
    took = time.monotonic() - start
    message = str(info.value)
    assert took < TIMEOUT + MARGIN, took
    assert message.startswith("comfyui.repo: ")
    assert f"http://***@127.0.0.1:{silent_port}/ComfyUI.git" in message, message
    assert "secret" not in message
    assert "source_timeout" in message and "Fix:" in message


def test_git_ls_remote_of_a_silent_git_daemon_port_names_the_repo(silent_port):
    url = f"git://127.0.0.1:{silent_port}/ComfyUI-Manager"  # git:// has no timeout of its own
    start = time.monotonic()
    with pytest.raises(SourceUnreachable, match=rf"manager.follow: {url} did not answer"):
        follow(url, "main", "manager.follow", timeout=TIMEOUT)
    assert time.monotonic() - start < TIMEOUT + MARGIN


def test_pip_against_a_silent_index_names_the_index_within_the_timeout(tmp_path, silent_port):
    index = f"http://127.0.0.1:{silent_port}/simple"
    options = ResolveOptions(index_url=index, network_timeout_s=TIMEOUT, timeout_s=600)
    start = time.monotonic()
    with pytest.raises(ResolveError) as info:
        resolve([("one", ["alpha"])], "3.11", "manylinux_2_28_x86_64", (), options)
    took = time.monotonic() - start
    message = str(info.value)
    assert took < TIMEOUT + MARGIN, (took, message)
    assert f"pip could not reach {index} (the package index (--index-url))" in message, message
    assert "/simple/alpha/" in message and "source_timeout" in message and "Fix:" in message


def test_a_silent_torch_index_is_named_as_the_targets_torch_index_url(tmp_path, silent_port):
    torch = f"http://127.0.0.1:{silent_port}/whl/cpu"
    simple = tmp_path / "simple"  # a local main index that has no torch
    (simple / "torch").mkdir(parents=True)
    (simple / "torch" / "index.html").write_text("<html><body></body></html>\n")
    options = ResolveOptions(
        index_url=simple.as_uri(), extra_index_urls=(torch,), network_timeout_s=TIMEOUT
    )
    start = time.monotonic()
    with pytest.raises(ResolveError, match=r"gpu_targets.<target>.torch_index_url") as info:
        resolve([("torch", ["torch==2.5.1"])], "3.11", "manylinux_2_28_x86_64", (), options)
    assert time.monotonic() - start < TIMEOUT + MARGIN
    assert f"pip could not reach {torch} (" in str(info.value)


def test_unreachable_indexes_reads_pips_log_and_passes_over_missing_projects():
    options = ResolveOptions(extra_index_urls=("https://u:p@download.pytorch.org/whl/cu128",))
    log = "\n".join(
        [
            "2025-01-01T00:00:00,000 Could not fetch URL https://download.pytorch.org/whl/"
            "cu128/numpy/: 403 Client Error: Forbidden for url: x - skipping",
            "2025-01-01T00:00:01,000 Could not fetch URL https://pypi.org/simple/numpy/: "
            "connection error: HTTPSConnectionPool(host='pypi.org', port=443): Max retries "
            "exceeded with url: /simple/numpy/ - skipping",
        ]
    )
    failed = unreachable_indexes(log, options)
    assert list(failed) == ["https://pypi.org/simple"]  # the 403 is a project it lacks
    assert "PyPI, pip's default index" in index_message(failed, options)
    download = (
        "ERROR: Could not install packages due to an OSError: HTTPSConnectionPool("
        "host='download.pytorch.org', port=443): Max retries exceeded with url: /whl/x.whl"
    )
    failed = unreachable_indexes(download, options)
    assert list(failed) == ["https://u:p@download.pytorch.org/whl/cu128"]
    text = index_message(failed, options)
    assert (
        "https://***@download.pytorch.org/whl/cu128 (an extra index" in text and ":p@" not in text
    )
