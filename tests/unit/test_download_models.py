"""download_models.py against real aria2c and HTTP servers started here on 127.0.0.x.

The token host mapping AICLIPSE_TOKEN_HOSTS (loopback hosts only) stands in for
huggingface.co / civitai.com, which a test cannot reach; the default mapping is tested as pure
functions below.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import download_models as dm
import pytest
from hostile_servers import Route, Server, descendants, safetensors_bytes

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "runtime" / "download_models.py"
TOKEN = "hf_canaryTOKEN0123456789"
CIVITAI = "civitai_canary_987654321"

pytestmark = pytest.mark.skipif(shutil.which("aria2c") is None, reason="needs aria2c")


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def env(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "CIVITAI_TOKEN")}
    base["no_proxy"] = "*"
    return base


def run_dl(tmp_path, lines, env, *extra, capsys=None):
    manifest = tmp_path / "models_manifest.txt"
    manifest.write_text("\n".join(lines) + "\n")
    argv = [
        "--manifest",
        str(manifest),
        "--models-dir",
        str(tmp_path / "models"),
        "--retry-wait",
        "0.2",
        "--max-tries",
        "3",
        "--reserve-mib",
        "0",
        "--connections",
        "1",
        *extra,
    ]
    code = dm.main(argv, env)
    out = capsys.readouterr().out if capsys else ""
    return code, out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------
# Pure functions


@pytest.mark.parametrize(
    ("url", "var"),
    [
        ("https://huggingface.co/a/b/resolve/main/x.safetensors", "HF_TOKEN"),
        ("https://cdn-lfs.huggingface.co/x", "HF_TOKEN"),
        ("https://HuggingFace.co./x", "HF_TOKEN"),
        ("https://civitai.com/api/download/models/1", "CIVITAI_TOKEN"),
        ("http://civitai.com/api/download/models/1", None),
        ("http://huggingface.co/x", None),
        ("https://huggingface.co.evil.example/x", None),
        ("https://evilhuggingface.co/x", None),
        ("https://example.com/huggingface.co/x", None),
        ("https://example.com/?u=civitai.com", None),
        ("https://user@evil.example/@huggingface.co/x", None),
    ],
)
def test_token_host_is_the_parsed_host(url, var):
    rules = dm.token_rules({})
    token = dm.token_for(url, rules, {"HF_TOKEN": "a", "CIVITAI_TOKEN": "b"})
    assert (token.var if token else None) == var


def test_token_hosts_override_accepts_loopback_only():
    rules = dm.token_rules({dm.TOKEN_HOSTS_ENV: "127.0.0.1=HF_TOKEN"})
    assert dm.token_for("http://127.0.0.1:9/x", rules, {"HF_TOKEN": "t"}).value == "t"
    assert dm.token_for("https://huggingface.co/x", rules, {"HF_TOKEN": "t"}) is None
    with pytest.raises(dm.UsageError):
        dm.token_rules({dm.TOKEN_HOSTS_ENV: "evil.example=HF_TOKEN"})


def test_masker_hides_tokens_and_signatures():
    mask = dm.Masker([TOKEN])
    text = mask(f"x {TOKEN} https://s3/x?X-Amz-Signature=abc&token=zz Bearer qq")
    assert TOKEN not in text and "abc" not in text and "zz" not in text and "qq" not in text


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [("3", 9, 3), (None, 2, 2), ("garbage", 2, 2), ("100000", 1, 50)],
)
def test_retry_after(value, default, expected):
    headers = {"Retry-After": value} if value else {}
    assert dm.retry_after(headers, default, 50) == expected


def test_retry_after_http_date():
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    assert 2 < dm.retry_after({"Retry-After": when}, 0, 60) <= 5


def test_safetensors_checks(tmp_path):
    good = tmp_path / "g.safetensors"
    good.write_bytes(safetensors_bytes(64))
    assert dm.content_problem(good, good.name) is None
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(safetensors_bytes(64)[:-10])
    assert "truncated" in dm.content_problem(truncated, truncated.name)
    huge = tmp_path / "h.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    assert "does not fit" in dm.content_problem(huge, huge.name)
    html = tmp_path / "p.safetensors"
    html.write_bytes(b"<!DOCTYPE html><html>login</html>")
    assert dm.content_problem(html, html.name) is not None


@pytest.mark.parametrize(
    ("name", "body", "refused"),
    [
        ("m.ckpt", b"<!doctype html><title>Sign in</title>", True),
        ("m.pt", b'  {"error": "Repo not found"}', True),
        ("m.bin", b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", True),
        ("config.json", b'{"a": 1}', False),
        ("m.pt", b"PK\x03\x04rest-of-a-zip", False),
        ("m.pt", b"{not json at all", False),
    ],
)
def test_error_pages_are_refused(tmp_path, name, body, refused):
    path = tmp_path / name
    path.write_bytes(body)
    assert (dm.content_problem(path, name) is not None) is refused


# ------------------------------------------------------------------------------------------
# Real aria2c


def test_download_verify_and_warm_start_reads_nothing(tmp_path, server, env, capsys, monkeypatch):
    data = safetensors_bytes(50_000)
    sha = hashlib.sha256(data).hexdigest()
    url = server.add("/m/model.safetensors", Route(data))
    url2 = server.add("/m/other.bin", Route(os.urandom(3000)))
    lines = [f"checkpoints {url} sha256={sha}", f"vae {url2} name=v.bin"]
    code, out = run_dl(tmp_path, lines, env, capsys=capsys)
    assert code == 0, out
    dest = tmp_path / "models" / "checkpoints" / "model.safetensors"
    assert dest.read_bytes() == data
    assert json.loads(dm.sidecar_path(dest).read_text())["sha256"] == sha
    assert "[done] checkpoints/model.safetensors" in out and "/s)" in out
    assert not (dest.parent / "model.safetensors.part").exists()

    before_requests, before_hashes = len(server.requests), dm.HASH_CALLS

    def no_hash(path):
        raise AssertionError(f"re-hashed {path}")

    monkeypatch.setattr(dm, "sha256_file", no_hash)
    code, out = run_dl(tmp_path, lines, env, capsys=capsys)
    assert code == 0, out
    assert len(server.requests) == before_requests  # 0 bytes, not even a probe
    assert before_hashes == dm.HASH_CALLS
    assert "2 present, 0 downloaded" in out


def test_existing_part_resumes(tmp_path, server, env, capsys):
    data = os.urandom(2_000_000)
    # A small delay per 16 KiB chunk, so bytes counted are bytes the client took (aria2c's
    # first, Range-less request is dropped after its headers).
    url = server.add("/r/big.bin", Route(data, delay=0.002))
    folder = tmp_path / "models" / "loras"
    folder.mkdir(parents=True)
    (folder / "big.bin.part").write_bytes(data[:1_500_000])
    code, out = run_dl(tmp_path, [f"loras {url} size={len(data)}"], env, capsys=capsys)
    assert code == 0, out
    assert (folder / "big.bin").read_bytes() == data
    assert server.sent["/r/big.bin"] < 1_000_000  # about the missing 500 kB, not 2 MB
    starts = [r["headers"].get("Range", "") for r in server.requests]
    assert any(re.fullmatch(r"bytes=1[45]\d{5}-\d*", start) for start in starts), starts


def test_wrong_sha256_leaves_nothing(tmp_path, server, env, capsys):
    url = server.add("/x/m.bin", Route(os.urandom(5000)))
    code, out = run_dl(tmp_path, [f"vae {url} sha256={'0' * 64}"], env, capsys=capsys)
    assert code == 1
    assert "sha256 mismatch" in out
    assert leftovers(tmp_path / "models" / "vae") == ["m.bin.lock"]


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (Route(b"<html><body>Please log in</body></html>", content_type="text/html"), "HTML"),
        (Route(b'{"error": "Repository not found"}'), "JSON"),
        (Route(safetensors_bytes(5000)[:-100]), "truncated"),
    ],
    ids=["html-login", "json-error", "truncated-safetensors"],
)
def test_bad_bodies_are_refused(tmp_path, server, env, capsys, route, message):
    name = "m.safetensors" if "truncated" in message else "m.ckpt"
    url = server.add("/b/" + name, route)
    code, out = run_dl(tmp_path, [f"checkpoints {url}"], env, capsys=capsys)
    assert code == 1, out
    assert message in out
    folder = tmp_path / "models" / "checkpoints"
    assert [n for n in leftovers(folder) if not n.endswith(".lock")] == []


def test_http_errors(tmp_path, server, env, capsys):
    env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.1=HF_TOKEN"})
    url = server.add("/gated.bin", Route(b"x" * 100, need_auth=f"Bearer {TOKEN}"))
    code, out = run_dl(tmp_path, [f"vae {url}"], env, capsys=capsys)
    assert code == 3 and "set HF_TOKEN" in out, out
    missing = server.base + "/nope.bin"
    code, out = run_dl(tmp_path, [f"vae {missing}"], env, capsys=capsys)
    assert code == 1 and "404" in out and "not found" in out, out
    # With the token set, the gated file downloads.
    code, out = run_dl(tmp_path, [f"vae {url}"], dict(env, HF_TOKEN=TOKEN), capsys=capsys)
    assert code == 0, out


def test_wrong_token_is_masked_even_when_echoed(tmp_path, server, env, capsys):
    env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.1=HF_TOKEN"}, HF_TOKEN=TOKEN)
    route = Route(b"x", first=(403,), status_body=f"bad token {TOKEN}".encode())
    url = server.add("/forbidden.bin", route)
    code, out = run_dl(tmp_path, [f"vae {url}"], env, capsys=capsys)
    assert code == 1 and "HF_TOKEN was refused" in out, out
    assert TOKEN not in out


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_then_success(tmp_path, server, env, capsys, status):
    data = os.urandom(20_000)
    url = server.add("/busy.bin", Route(data, first=(status, status), retry_after="1"))
    started = time.monotonic()
    code, out = run_dl(tmp_path, [f"vae {url} size={len(data)}"], env, capsys=capsys)
    assert code == 0, out
    assert time.monotonic() - started >= 2  # two Retry-After: 1 honoured
    assert f"HTTP {status}" in out
    assert (tmp_path / "models" / "vae" / "busy.bin").read_bytes() == data


def test_aria2c_rate_limited_midway_is_retried(tmp_path, server, env, capsys):
    """The probe passes, then aria2c itself gets 429s: the file is retried, not lost."""
    data = os.urandom(30_000)
    route = Route(data)
    url = server.add("/later.bin", route)
    original = dm.Downloader.probe

    def probe_then_throttle(self, entry):
        result = original(self, entry)
        if not route.retry_after:  # first probe only: aria2c then meets a 429, so does the
            route.first = [429, 429]  # re-probe (which waits Retry-After), then success
            route.retry_after = "1"
        return result

    dm_probe = probe_then_throttle
    try:
        dm.Downloader.probe = dm_probe
        code, out = run_dl(tmp_path, [f"vae {url} size={len(data)}"], env, capsys=capsys)
    finally:
        dm.Downloader.probe = original
    assert code == 0, out
    assert "aria2c exit" in out and "retry" in out
    assert (tmp_path / "models" / "vae" / "later.bin").read_bytes() == data


def test_token_not_forwarded_across_redirect(tmp_path, env, capsys):
    a, b = Server("127.0.0.1"), Server("127.0.0.2")
    try:
        data = os.urandom(10_000)
        target = b.add("/bucket/m.bin", Route(data))
        url = a.add("/api/download/1", Route(redirect=target + "?X-Amz-Signature=sig123"))
        env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.1=CIVITAI_TOKEN"}, CIVITAI_TOKEN=CIVITAI)
        code, out = run_dl(tmp_path, [f"loras {url} name=m.bin"], env, capsys=capsys)
        assert code == 0, out
        assert a.requests[0]["headers"].get("Authorization") == f"Bearer {CIVITAI}"
        assert b.requests, "the storage host was never asked"
        assert all("Authorization" not in r["headers"] for r in b.requests)
        assert CIVITAI not in out and "sig123" not in out
    finally:
        a.close()
        b.close()


def test_token_never_in_a_child_process(tmp_path, server, env):
    """The downloader's own children (aria2c) hold the token in neither argv nor environment:
    only this test's children are scanned, not every aria2c on the machine."""
    env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.1=HF_TOKEN"}, HF_TOKEN=TOKEN)
    data = os.urandom(400_000)
    gated = server.add("/slow.bin", Route(data, need_auth=f"Bearer {TOKEN}", delay=0.05))
    other = Server("127.0.0.2")
    try:
        plain = other.add("/plain.bin", Route(os.urandom(400_000), delay=0.05))
        manifest = tmp_path / "m.txt"
        manifest.write_text(f"vae {gated}\nvae {plain}\n")
        proc = _spawn(tmp_path, manifest, env)
        seen: dict[int, tuple[bytes, bytes]] = {}
        while proc.poll() is None:
            for pid in descendants(proc.pid):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    continue
                seen[pid] = (argv, environ)
            time.sleep(0.05)
        out = proc.stdout.read()
    finally:
        other.close()
    assert proc.returncode == 0, out
    assert any(b"aria2c" in argv for argv, _ in seen.values()), "never saw aria2c running"
    for argv, environ in seen.values():
        assert TOKEN.encode() not in argv and TOKEN.encode() not in environ, argv
    assert TOKEN not in out
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in server.requests)
    assert all(r["auth"] is None for r in other.requests)


def _spawn(tmp_path, manifest, env):
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--manifest", str(manifest), "--models-dir",
         str(tmp_path / "models"), "--retry-wait", "0.2", "--reserve-mib", "0",
         "--connections", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_kill_midway_then_resume(tmp_path, server, env):
    data = os.urandom(1_500_000)
    url = server.add("/k.bin", Route(data, delay=0.05))  # about 320 kB/s
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"vae {url} sha256={hashlib.sha256(data).hexdigest()}\n")
    part = tmp_path / "models" / "vae" / "k.bin.part"
    proc = _spawn(tmp_path, manifest, env)
    deadline = time.monotonic() + 15
    while server.sent.get("/k.bin", 0) < 300_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # aria2c stops too (--stop-with-process), saving its state
    proc.wait()
    time.sleep(0.5)
    assert part.exists() and server.sent["/k.bin"] < len(data) - 500_000
    assert not (tmp_path / "models" / "vae" / "k.bin").exists()
    served_before = server.sent["/k.bin"]
    route = server.routes["/k.bin"]
    route.delay = 0.002  # so bytes counted are bytes taken (see test_existing_part_resumes)
    proc = _spawn(tmp_path, manifest, env)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert (tmp_path / "models" / "vae" / "k.bin").read_bytes() == data
    assert server.sent["/k.bin"] - served_before < len(data) - 200_000, out  # resumed
    ranges = [r["headers"].get("Range", "") for r in server.requests]
    starts = [int(m.group(1)) for rng in ranges if (m := re.fullmatch(r"bytes=(\d+)-\d*", rng))]
    assert any(start >= 200_000 for start in starts), starts


def test_two_processes_one_destination(tmp_path, server, env):
    data = os.urandom(500_000)
    url = server.add("/shared.bin", Route(data, delay=0.05))
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"vae {url} size={len(data)}\n")
    first = _spawn(tmp_path, manifest, env)
    part = tmp_path / "models" / "vae" / "shared.bin.part"
    deadline = time.monotonic() + 10
    while not part.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = _spawn(tmp_path, manifest, env)
    out1, _ = first.communicate(timeout=60)
    out2, _ = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    assert "waiting" in out2 and "verified by another process" in out2
    full_gets = [r for r in server.aria2_gets("/shared.bin") if r["headers"].get("Range") is None]
    assert len(full_gets) == 1
    assert server.sent["/shared.bin"] < 2 * len(data)
    assert (tmp_path / "models" / "vae" / "shared.bin").read_bytes() == data


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("sized", [True, False], ids=["manifest-size", "probed-size"])
def test_free_space_checked_before_the_download(small_disk, server, env, capsys, sized):
    """size= in the manifest: the batch is refused before any request; a size only the probe
    tells: that file is refused after its probe (1 KiB), before its transfer."""
    good = os.urandom(100_000)
    big = os.urandom(3_000_000)
    good_url = server.add("/good.bin", Route(good))
    big_url = server.add("/big.bin", Route(big))
    models = small_disk / "models"
    manifest = small_disk / "m.txt"
    manifest.write_text(f"vae {good_url}\n")
    argv = ["--manifest", str(manifest), "--models-dir", str(models), "--reserve-mib", "0"]
    assert dm.main(argv, env) == 0
    stat = (models / "vae" / "good.bin").stat()
    size = f" size={len(big)}" if sized else ""
    manifest.write_text(f"vae {good_url}\nvae {big_url}{size}\n")
    before = len(server.requests)
    code = dm.main(argv, env)
    out = capsys.readouterr().out
    assert code == 1, out
    if sized:
        assert "not enough free space for this batch" in out, out
        assert len(server.requests) == before  # not even a probe
    else:
        assert "vae/big.bin: not enough free space: needs 2.9 MiB more" in out, out
        assert [r["range"] for r in server.requests[before:]] == ["bytes=0-1023"]
    assert server.sent.get("/big.bin", 0) <= dm.PROBE_BYTES
    assert (models / "vae" / "good.bin").stat().st_mtime_ns == stat.st_mtime_ns
    assert not (models / "vae" / "big.bin.part").exists()


def test_disk_fills_during_download(small_disk, server, env, capsys):
    """No size anywhere (no Content-Length, no Range): only the disk can say it is full."""
    good = os.urandom(50_000)
    good_url = server.add("/good.bin", Route(good))
    url = server.add("/stream.bin", Route(os.urandom(3_000_000), ranges=False, length=False))
    models = small_disk / "models"
    manifest = small_disk / "m.txt"
    argv = ["--manifest", str(manifest), "--models-dir", str(models), "--reserve-mib", "0",
            "--max-tries", "1"]  # fmt: skip
    # First the good file alone (two downloads racing for 2 MiB could both hit ENOSPC),
    # then the stream that fills the disk: the verified file must stay untouched.
    manifest.write_text(f"vae {good_url}\n")
    assert dm.main(argv, env) == 0, capsys.readouterr().out
    manifest.write_text(f"vae {good_url}\nvae {url}\n")
    code = dm.main(argv, env)
    out = capsys.readouterr().out
    assert code == 1, out
    assert "disk full" in out or "I/O error" in out, out
    assert (models / "vae" / "good.bin").read_bytes() == good
    assert not (models / "vae" / "stream.bin").exists()
    assert not (models / "vae" / "stream.bin.part").exists()


def test_manifest_error_exits_2(tmp_path, env, capsys):
    code, out = run_dl(tmp_path, ["checkpoint http://x/y.bin"], env, capsys=capsys)
    assert code == 2
    assert "models_manifest.txt:1:1: unknown model folder 'checkpoint'" in out


def test_dry_run_touches_nothing(tmp_path, server, env, capsys):
    url = server.add("/d.bin", Route(b"x" * 10))
    code, out = run_dl(tmp_path, [f"vae {url}"], env, "--dry-run", capsys=capsys)
    assert code == 0 and "download" in out
    assert not server.requests and not (tmp_path / "models").exists()


def test_script_runs_from_the_repo_without_pythonpath(tmp_path, env):
    manifest = tmp_path / "m.txt"
    manifest.write_text("vae https://example.invalid/v.bin\n")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--manifest", str(manifest), "--dry-run",
         "--models-dir", str(tmp_path)],
        env={k: v for k, v in env.items() if k != "PYTHONPATH"}, capture_output=True,
        text=True, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "vae/v.bin" in done.stdout
