"""download_models.py against hostile servers (issue 13), one test per case.

Real aria2c and real HTTP servers on loopback, made here: 127.0.0.1 is the token host
(AICLIPSE_TOKEN_HOSTS maps it to HF_TOKEN), 127.0.0.2 another host. Every request is logged
with its Authorization header, so each test can say that the canary token reached its own
host only. The downloader runs as a subprocess in its own session with a time limit, so a
hang fails the test instead of blocking it, and nothing it starts outlives the test.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import download_models as dm
import pytest
from hostile_servers import PROBE_RANGE, Listener, Route, Server, descendants, self_signed

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "runtime" / "download_models.py"
TOKEN = "hf_canaryHOSTILE_5f0c9a7e31"

pytestmark = pytest.mark.skipif(shutil.which("aria2c") is None, reason="needs aria2c")


@pytest.fixture
def env():
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "CIVITAI_TOKEN")}
    for var in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy"):
        base.pop(var, None)
        base.pop(var.upper(), None)
    base.update(no_proxy="*", HF_TOKEN=TOKEN, **{dm.TOKEN_HOSTS_ENV: "127.0.0.1=HF_TOKEN"})
    return base


@pytest.fixture
def hosts():
    home, other = Server("127.0.0.1"), Server("127.0.0.2")
    yield home, other
    home.close()
    other.close()


def spawn(tmp_path: Path, lines: list[str], env: dict, *extra: str) -> subprocess.Popen:
    manifest = tmp_path / "models_manifest.txt"
    manifest.write_text("".join(line + "\n" for line in lines))
    argv = [
        sys.executable, str(SCRIPT), "--manifest", str(manifest), "--models-dir",
        str(tmp_path / "models"), "--retry-wait", "0.1", "--reserve-mib", "0",
        "--connections", "1", "--max-tries", "3", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The output; a process still running after ``timeout`` is killed and the test fails."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        out, _ = proc.communicate()
        pytest.fail(f"download_models.py still running after {timeout} s:\n{out}")
    kill_session(proc)
    return out


def kill_session(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def download(tmp_path, lines, env, *extra, timeout: float = 60) -> tuple[int, str]:
    proc = spawn(tmp_path, lines, env, *extra)
    out = finish(proc, timeout)
    return proc.returncode, out


def token_only_at_home(*servers: Server) -> None:
    """The canary reached 127.0.0.1 only, and only as the bearer token."""
    for server in servers:
        for request in server.requests:
            text = repr(request)
            if server.host != "127.0.0.1":
                assert TOKEN not in text, f"token sent to {server.host}: {request}"
            else:
                assert TOKEN not in text or request["auth"] == f"Bearer {TOKEN}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder(tmp_path: Path) -> Path:
    return tmp_path / "models" / "vae"


# ------------------------------------------------------------------------------------------
# F1: the token reaches its own host and no other


def test_f1_bait_probe_answered_full_get_redirected(tmp_path, hosts, env):
    """The probe (Range: bytes=0-1023) gets the file; every other GET is redirected to
    another host. That host must never see the token."""
    home, other = hosts
    data = os.urandom(300_000)
    elsewhere = other.add("/store/m.bin", Route(data))

    def bait(request):
        return None if request["range"] == PROBE_RANGE else (302, {"Location": elsewhere}, b"")

    url = home.add("/m.bin", Route(data, hook=bait))
    code, out = download(tmp_path, [f"vae {url} sha256={sha(data)}"], env)
    assert code == 0, out
    assert (folder(tmp_path) / "m.bin").read_bytes() == data
    assert home.requests[0]["auth"] == f"Bearer {TOKEN}"
    assert other.requests, "the bait's other host was never asked"
    token_only_at_home(home, other)
    assert TOKEN not in out


def test_f1_redirect_on_a_resumed_range(tmp_path, hosts, env):
    """A .part resumes; the token host answers the resumed Range with a 302 elsewhere."""
    home, other = hosts
    data = os.urandom(600_000)
    elsewhere = other.add("/store/m.bin", Route(data))

    def on_resume(request):
        rng = request["range"] or ""
        resumed = rng.startswith("bytes=") and not rng.startswith("bytes=0-")
        return (302, {"Location": elsewhere}, b"") if resumed else None

    url = home.add("/m.bin", Route(data, hook=on_resume))
    folder(tmp_path).mkdir(parents=True)
    (folder(tmp_path) / "m.bin.part").write_bytes(data[:400_000])
    code, out = download(tmp_path, [f"vae {url} size={len(data)}"], env)
    assert code == 0, out
    assert (folder(tmp_path) / "m.bin").read_bytes() == data
    assert any((r["range"] or "").startswith("bytes=400000-") for r in other.requests)
    token_only_at_home(home, other)


# ------------------------------------------------------------------------------------------
# F4: only http and https, at every hop; no downgrade


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp", "data:,hello"])
@pytest.mark.parametrize("hops", [1, 2])
def test_f4_other_schemes_refused_at_any_hop(tmp_path, hosts, env, target, hops):
    home, _ = hosts
    listener = Listener()
    try:
        location = f"ftp://127.0.0.2:{listener.port}/x" if target == "ftp" else target
        url = home.add("/last", Route(redirect=location))
        if hops == 2:
            url = home.add("/first", Route(redirect=url))
        code, out = download(tmp_path, [f"vae {url} name=m.bin"], env)
        assert code == 1, out
        scheme = location.split(":")[0]
        assert f"redirect hop {hops} " in out and f"scheme '{scheme}:' refused" in out, out
        assert "HTTP None" not in out
        assert listener.connections == 0
    finally:
        listener.close()


def test_f4_aria2c_redirect_to_ftp_is_refused(tmp_path, hosts, env):
    """aria2c follows redirects of token-free URLs itself: ftp/sftp go to a closed port."""
    home, _ = hosts
    listener = Listener()
    try:
        ftp = f"ftp://127.0.0.2:{listener.port}/x"

        def bait(request):
            return None if request["range"] == PROBE_RANGE else (302, {"Location": ftp}, b"")

        url = home.add("/public/m.bin", Route(os.urandom(50_000), hook=bait))
        env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.3=HF_TOKEN"})  # no token for home
        code, out = download(tmp_path, [f"vae {url}"], env, "--max-tries", "1")
        assert code == 1, out
        assert "aria2c: redirect hop 1" in out and "scheme 'ftp:' refused" in out, out
        assert listener.connections == 0
    finally:
        listener.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_f4_https_to_http_downgrade_refused_on_the_wire(tmp_path, hosts, env):
    """The token host over https redirects to plain http: refused, naming the hop."""
    _, other = hosts
    cert, key = self_signed(tmp_path)
    secure = Server("127.0.0.1", tls=(cert, key))
    try:
        plain = other.add("/m.bin", Route(os.urandom(20_000)))
        url = secure.add("/m.bin", Route(redirect=plain))
        code, out = download(tmp_path, [f"vae {url}"], dict(env, SSL_CERT_FILE=str(cert)))
        assert code == 1, out
        assert "redirect hop 1" in out and "https -> http downgrade is refused" in out, out
        assert secure.requests and secure.requests[0]["auth"] == f"Bearer {TOKEN}"
        assert other.requests == []
    finally:
        secure.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_f4_aria2c_https_to_http_downgrade_refused(tmp_path, hosts, env):
    """A token-free https URL: the probe is answered, aria2c's GET is redirected to plain
    http. aria2c's http goes to a closed port: the other host is never asked."""
    _, other = hosts
    cert, key = self_signed(tmp_path)
    secure = Server("127.0.0.1", tls=(cert, key))
    try:
        plain = other.add("/m.bin", Route(os.urandom(20_000)))

        def bait(request):
            return None if request["range"] == PROBE_RANGE else (302, {"Location": plain}, b"")

        url = secure.add("/m.bin", Route(os.urandom(20_000), hook=bait))
        env = dict(env, SSL_CERT_FILE=str(cert), **{dm.TOKEN_HOSTS_ENV: "127.0.0.3=HF_TOKEN"})
        code, out = download(tmp_path, [f"vae {url}"], env, "--max-tries", "1")
        assert code == 1, out
        assert "aria2c: redirect hop 1" in out and "https -> http downgrade" in out, out
        assert any(r["range"] != PROBE_RANGE for r in secure.requests)  # aria2c asked
        assert other.requests == []
    finally:
        secure.close()


def test_f4_aria2c_still_follows_plain_redirects(tmp_path, hosts, env):
    """The closed-port proxies leave http -> http alone (token-free, another host)."""
    home, other = hosts
    data = os.urandom(50_000)
    moved = other.add("/moved.bin", Route(data))

    def bait(request):
        return None if request["range"] == PROBE_RANGE else (302, {"Location": moved}, b"")

    url = home.add("/m.bin", Route(data, hook=bait))
    env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.3=HF_TOKEN"})
    code, out = download(tmp_path, [f"vae {url} sha256={sha(data)}"], env)
    assert code == 0, out
    assert other.requests and all(r["auth"] is None for r in other.requests)


def test_f4_https_to_http_downgrade_refused():
    dm.check_hop("https://b.example/x", "https://a.example/", 1)
    dm.check_hop("https://b.example/x", "http://a.example/", 1)  # an upgrade is fine
    with pytest.raises(dm.DownloadError, match=r"redirect hop 3 .*https -> http downgrade"):
        dm.check_hop("http://b.example/x", "https://a.example/", 3)


def test_f4_opener_knows_http_and_https_only():
    opener = dm.opener(dm._Watchdog())
    kinds = {type(h).__name__ for h in opener.handlers}
    assert kinds - {"ProxyHandler"} == {"UnknownHandler", "_HTTPHandler", "_HTTPSHandler"}
    for url in ("file:///etc/passwd", "ftp://127.0.0.2/x", "data:,x"):
        with pytest.raises(dm.urllib.error.URLError, match="unknown url type"):
            opener.open(url)


# ------------------------------------------------------------------------------------------
# F2: deadlines; one slow host delays only its own files


def test_f2_trickling_probe_meets_the_whole_request_deadline(tmp_path, hosts, env):
    """One byte every 0.5 s: each socket read is quick, the whole probe would take 8 min.
    With --timeout 2 it fails in seconds, and the other host's files are done first."""
    home, other = hosts
    slow = home.add("/slow.bin", Route(os.urandom(4096), step=1, delay=0.5))
    fast = [other.add(f"/fast{i}.bin", Route(os.urandom(200_000))) for i in (1, 2)]
    lines = [f"vae {slow}", *(f"vae {url}" for url in fast)]
    started = time.monotonic()
    code, out = download(tmp_path, lines, env, "--timeout", "2", timeout=60)
    assert code == 1, out
    assert time.monotonic() - started < 30
    assert "127.0.0.1 sent no complete answer within 2 s" in out, out
    failed = out.index("[failed] vae/slow.bin")
    assert out.index("[done] vae/fast1.bin") < failed and out.index("[done] vae/fast2.bin") < failed


@pytest.mark.parametrize("client", ["aria2c", "own"])
def test_f2_slow_transfer_stops_with_a_clear_message(tmp_path, hosts, env, client):
    """2 KiB/s after the probe: below --lowest-speed-kib 50 the transfer stops."""
    home, _ = hosts
    route = Route(os.urandom(2_000_000), step=1024, delay=0.5)
    url = home.add("/crawl.bin", route)
    if client == "aria2c":
        env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.3=HF_TOKEN"})
    extra = ("--lowest-speed-kib", "50", "--speed-window", "2", "--max-tries", "1")
    code, out = download(tmp_path, [f"vae {url}"], env, *extra, timeout=90)
    assert code == 1, out
    assert "too slow" in out, out
    assert home.sent["/crawl.bin"] < 200_000


# ------------------------------------------------------------------------------------------
# F2b: bodies of unknown size are bounded


@pytest.mark.parametrize("client", ["aria2c", "own"])
def test_f2b_unknown_size_stops_at_the_manifest_size(tmp_path, hosts, env, client):
    home, _ = hosts
    body = os.urandom(8_000_000)  # no Content-Length, no Range: only size= bounds it
    url = home.add("/endless.bin", Route(body, ranges=False, length=False, delay=0.01))
    if client == "aria2c":
        env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.3=HF_TOKEN"})
    code, out = download(tmp_path, [f"vae {url} size=200000"], env, "--max-tries", "1")
    assert code == 1, out
    assert "more than the manifest's size=200000 bytes" in out, out
    assert home.sent["/endless.bin"] < 4_000_000
    assert [n for n in os.listdir(folder(tmp_path)) if not n.endswith(".lock")] == []


def test_f2b_a_body_longer_than_the_probe_announced_stops(tmp_path, hosts, env):
    """The probe hears of 100 kB (Content-Range total); the GET then sends 3 MB. Without a
    manifest size= the announced size bounds it: stopped, nothing kept. (Our own client, the
    token's: aria2c's watcher polls, so on loopback it may finish the 3 MB first and fail
    after it, on the size check.)"""
    client = "own"
    home, _ = hosts
    body = os.urandom(3_000_000)

    def liar(request):
        if request["range"] == PROBE_RANGE:
            return 206, {"Content-Range": "bytes 0-1023/100000"}, body[:1024]
        return 200, {}, body

    url = home.add("/grows.bin", Route(body, hook=liar))
    if client == "aria2c":
        env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.3=HF_TOKEN"})
    code, out = download(tmp_path, [f"vae {url}"], env, "--max-tries", "1")
    assert code == 1, out
    assert "more than the 100000 bytes it announced" in out, out
    assert [n for n in os.listdir(folder(tmp_path)) if not n.endswith(".lock")] == []


def test_a_hostile_location_fails_its_file_alone(tmp_path, hosts, env):
    """A Location with port 99999 (urlsplit raises ValueError): that file fails with a
    message, the batch goes on and ends with its summary."""
    home, other = hosts
    bad = home.add(
        "/bad.bin", Route(b"", hook=lambda r: (302, {"Location": "http://127.0.0.1:99999/x"}, b""))
    )
    good = other.add("/good.bin", Route(os.urandom(50_000)))
    code, out = download(tmp_path, [f"vae {bad}", f"vae {good}"], env, "--max-tries", "1")
    assert code == 1, out
    assert "Traceback" not in out, out
    assert "[failed] vae/bad.bin" in out and "[done] vae/good.bin" in out, out


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("client", ["aria2c", "own"])
def test_f2b_unknown_size_stops_at_the_reserve(small_disk, hosts, env, client):
    """6 MiB volume, 3 MiB reserve, a 4.5 MB body of unknown size: it would fit the disk but
    not the reserve, so it stops there; without Range support the .part cannot resume."""
    home, _ = hosts
    url = home.add("/stream.bin", Route(os.urandom(4_500_000), ranges=False, length=False,
                                        delay=0.01))  # fmt: skip
    if client == "aria2c":
        env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.3=HF_TOKEN"})
    code, out = download(small_disk, [f"vae {url}"], env, "--reserve-mib", "3", "--max-tries",
                         "1")  # fmt: skip
    assert code == 1, out
    assert "fell below the reserve" in out, out
    assert [n for n in os.listdir(folder(small_disk)) if not n.endswith(".lock")] == []


# ------------------------------------------------------------------------------------------
# F3: nothing secret stays behind; a killed transfer resumes


def files_holding(needle: bytes, roots: list[Path], since: float) -> list[str]:
    found = []
    for root in roots:
        for where, _, names in os.walk(root):
            for name in names:
                path = Path(where, name)
                try:
                    stat = path.lstat()
                    if not path.is_file() or stat.st_mtime < since or stat.st_size > 50_000_000:
                        continue
                    if needle in path.read_bytes():
                        found.append(str(path))
                except OSError:
                    continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_f3_kill_leaves_no_secret_and_keeps_resume_state(tmp_path, hosts, env, sig):
    home, other = hosts
    gated = os.urandom(2_000_000)
    public = os.urandom(2_000_000)
    gated_url = home.add("/gated.bin", Route(gated, need_auth=f"Bearer {TOKEN}", delay=0.05))
    public_url = other.add("/public.bin", Route(public, delay=0.05))
    lines = [f"vae {gated_url} size={len(gated)}", f"vae {public_url} size={len(public)}"]
    started = time.time() - 1
    proc = spawn(tmp_path, lines, env)
    children: dict[int, tuple[bytes, bytes]] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        home.sent.get("/gated.bin", 0) < 200_000 or other.sent.get("/public.bin", 0) < 200_000
    ):
        for pid in descendants(proc.pid):
            try:
                children[pid] = (Path(f"/proc/{pid}/cmdline").read_bytes(),
                                 Path(f"/proc/{pid}/environ").read_bytes())  # fmt: skip
            except OSError:
                continue
        time.sleep(0.05)
    assert any(b"aria2c" in argv for argv, _ in children.values()), "aria2c never ran"
    proc.send_signal(sig)
    out = finish(proc, 30)
    for pid in children:  # aria2c stops too (--stop-with-process after a SIGKILL)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
    roots = [tmp_path, Path(tempfile.gettempdir()), Path("/dev/shm")]
    assert files_holding(TOKEN.encode(), roots, started) == []
    for argv, environ in children.values():
        assert TOKEN.encode() not in argv + environ, argv
    if sig != signal.SIGKILL:
        assert proc.returncode == 128 + sig, out
        assert "partial downloads are kept" in out
    part = folder(tmp_path) / "public.bin.part"
    assert part.exists() and dm.control_path(folder(tmp_path) / "public.bin").exists()
    assert (folder(tmp_path) / "gated.bin.part").exists()
    # The next run resumes both, the token still only at home.
    for route in (home.routes["/gated.bin"], other.routes["/public.bin"]):
        route.delay = 0.0
    code, out = download(tmp_path, lines, env)
    assert code == 0, out
    assert (folder(tmp_path) / "gated.bin").read_bytes() == gated
    assert (folder(tmp_path) / "public.bin").read_bytes() == public
    resumed = [r["range"] for r in home.requests + other.requests if r["range"]]
    assert any(re.fullmatch(r"bytes=[1-9]\d{5,}-\d*", rng) for rng in resumed), resumed
    token_only_at_home(home, other)


def test_aria2c_killed_by_a_signal_resumes(tmp_path, hosts, env):
    """aria2c dies of SIGKILL mid-transfer: its .part and .aria2 stay, the next try resumes."""
    _, other = hosts
    data = os.urandom(3_000_000)
    route = Route(data, delay=0.03)
    url = other.add("/big.bin", route)
    proc = spawn(tmp_path, [f"vae {url} sha256={sha(data)}"], env)
    deadline = time.monotonic() + 30
    while other.sent.get("/big.bin", 0) < 700_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    aria2c = [
        p for p in descendants(proc.pid) if b"aria2c" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert aria2c, "aria2c is not running"
    os.kill(aria2c[0], signal.SIGKILL)
    route.delay = 0.0
    out = finish(proc)
    assert proc.returncode == 0, out
    assert "aria2c died of signal 9" in out
    assert (folder(tmp_path) / "big.bin").read_bytes() == data
    later = [r["range"] or "" for r in other.requests[1:] if r["range"] != PROBE_RANGE]
    assert any(re.fullmatch(r"bytes=[1-9]\d{5,}-\d*", rng) for rng in later), later


# ------------------------------------------------------------------------------------------
# F5, F6: messages; one retry budget; one read per file


def test_f5_non_utf8_manifest_names_file_and_line(tmp_path, env):
    manifest = tmp_path / "models_manifest.txt"
    manifest.write_bytes(b"vae http://127.0.0.1:9/a.bin\nvae http://127.0.0.1:9/b\xff.bin\n")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--manifest", str(manifest), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout
    assert f"{manifest}:2:25: not UTF-8 text (byte 0xff)" in done.stdout, done.stdout


def test_f6_aria2c_own_error_line_not_its_footer(tmp_path, hosts, env):
    home, _ = hosts

    def busy(request):
        return None if request["range"] == PROBE_RANGE else (503, {}, b"busy")

    url = home.add("/m.bin", Route(os.urandom(20_000), hook=busy))
    env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.3=HF_TOKEN"})
    code, out = download(tmp_path, [f"vae {url}"], env, "--max-tries", "1")
    assert code == 1, out
    assert "If there are any errors" not in out
    assert "status=503" in out, out


@pytest.mark.parametrize("client", ["aria2c", "own"])
def test_f6_sha256_mismatch_shows_the_actual_hash(tmp_path, hosts, env, client):
    home, _ = hosts
    data = os.urandom(50_000)
    url = home.add("/m.bin", Route(data))
    if client == "aria2c":
        env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.3=HF_TOKEN"})
    code, out = download(tmp_path, [f"vae {url} sha256={'0' * 64}"], env)
    assert code == 1, out
    assert f"sha256 mismatch: got {sha(data)}, the manifest says {'0' * 64}" in out, out
    assert [n for n in os.listdir(folder(tmp_path)) if not n.endswith(".lock")] == []


def test_f6_one_retry_budget(tmp_path, hosts, env):
    """--max-tries 3: the probe passes, aria2c's GET gets 503; three tries in all, not 3x3."""
    home, _ = hosts

    def busy(request):
        return None if request["range"] == PROBE_RANGE else (503, {}, b"busy")

    url = home.add("/m.bin", Route(os.urandom(20_000), hook=busy))
    env = dict(env, **{dm.TOKEN_HOSTS_ENV: "127.0.0.3=HF_TOKEN"})
    code, out = download(tmp_path, [f"vae {url}"], env, "--max-tries", "3")
    assert code == 1, out
    transfers = [r for r in home.requests if r["range"] != PROBE_RANGE]
    assert len(transfers) == 3, transfers
    assert "after 3 tries" in out
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert "tries per file in all" in " ".join(done.stdout.split())


@pytest.mark.parametrize(
    ("client", "with_sha", "hashes"),
    [("aria2c", True, 0), ("aria2c", False, 1), ("own", True, 0), ("own", False, 0)],
)
def test_each_file_is_read_once_after_download(tmp_path, hosts, env, client, with_sha, hashes):
    """aria2c checks a manifest sha256 itself; our client hashes while it downloads; only an
    aria2c download without sha256 is hashed after (HASH_CALLS counts those reads)."""
    home, _ = hosts
    data = os.urandom(100_000)
    url = home.add("/m.bin", Route(data))
    env = dict(env, no_proxy="*")
    if client == "aria2c":
        env[dm.TOKEN_HOSTS_ENV] = "127.0.0.3=HF_TOKEN"
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"vae {url}" + (f" sha256={sha(data)}" if with_sha else "") + "\n")
    before = dm.HASH_CALLS
    argv = ["--manifest", str(manifest), "--models-dir", str(tmp_path / "models"),
            "--reserve-mib", "0"]  # fmt: skip
    assert dm.main(argv, env) == 0
    assert dm.HASH_CALLS - before == hashes
    assert (folder(tmp_path) / "m.bin").read_bytes() == data
