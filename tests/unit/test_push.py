"""Push: docker push output, bytes uploaded, and the registry writer's retries (REG-1..4).

The writer talks to a real HTTP server on loopback that answers like a registry, with
scripted 503/429/401 answers; the docker tier pushes to a real registry.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pytest
from ansible.module_utils.push import bytes_pushed, parse_push
from ansible.module_utils.registry import RegistryError, Writer, retry_after

OUTPUT = """The push refers to repository [127.0.0.1:5000/a/comfyui]
5f70bf18a086: Preparing
7dc4cda9bcb3: Preparing
5f70bf18a086: Pushed
7dc4cda9bcb3: Layer already exists
abcdefabcdef: Mounted from a/other
tiny-cpu-0123456789ab: digest: sha256:%s size: 528
""" % ("d" * 64)


def test_parse_push_names_the_digest_and_the_uploaded_layers():
    digest, pushed, present = parse_push(OUTPUT)
    assert digest == "sha256:" + "d" * 64
    assert pushed == {"5f70bf18a086"} and present == {"7dc4cda9bcb3", "abcdefabcdef"}


def test_bytes_pushed_counts_only_uploaded_layers_in_manifest_order():
    diff_ids = ["sha256:7dc4cda9bcb3" + "0" * 52, "sha256:5f70bf18a086" + "1" * 52]
    manifest = {"layers": [{"size": 1000}, {"size": 234}]}
    assert bytes_pushed(diff_ids, manifest, {"5f70bf18a086"}) == 234
    assert bytes_pushed(diff_ids, manifest, set()) == 0


def test_retry_after():
    assert retry_after("7", 1.0) == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 2.0) == 2.0
    assert retry_after(None, 3.0) == 3.0 and retry_after("999", 1.0, cap=60) == 60


MANIFEST = json.dumps({"schemaVersion": 2, "layers": []}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
MEDIA = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def registry():
    state = {"script": [], "tags": {}, "seen": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _scripted(self) -> bool:
            state["seen"].append((self.command, self.path))
            if state["script"]:
                code, headers = state["script"].pop(0)
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True
            return False

        def do_GET(self):
            if self._scripted():
                return
            self.send_response(200)
            self.send_header("Content-Type", MEDIA)
            self.send_header("Docker-Content-Digest", DIGEST)
            self.send_header("Content-Length", str(len(MANIFEST)))
            self.end_headers()
            self.wfile.write(MANIFEST)

        def do_PUT(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self._scripted():
                return
            state["tags"][self.path.rsplit("/", 1)[1]] = (self.headers["Content-Type"], body)
            self.send_response(201)
            self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    waits: list[float] = []
    writer = Writer(f"127.0.0.1:{server.server_port}", sleep=waits.append, attempts=4)
    yield writer, state, waits
    server.shutdown()
    server.server_close()


def test_retag_moves_tags_by_manifest(registry):
    writer, state, _ = registry
    assert writer.retag("a/comfyui", DIGEST, ["tiny-cpu", "tiny-cpu-20261123"]) == [
        "tiny-cpu",
        "tiny-cpu-20261123",
    ]
    assert state["tags"]["tiny-cpu"] == (MEDIA, MANIFEST)


def test_5xx_and_429_are_retried_honouring_retry_after(registry):
    writer, state, waits = registry
    state["script"] = [(503, {}), (429, {"Retry-After": "5"})]
    assert writer.retag("a/comfyui", DIGEST, ["t"]) == ["t"]
    assert waits == [1.0, 5.0]


def test_401_fails_at_once_naming_the_credentials(registry):
    writer, state, waits = registry
    state["script"] = [(401, {"WWW-Authenticate": 'Basic realm="r"'})]
    with pytest.raises(RegistryError, match="AICLIPSE_REGISTRY_USERNAME"):
        writer.get_manifest("a/comfyui", DIGEST)
    assert waits == []


def test_a_registry_that_keeps_failing_gives_up_with_the_status(registry):
    writer, state, waits = registry
    state["script"] = [(502, {})] * 4
    with pytest.raises(RegistryError, match=r"HTTP 502 .* after 4 attempts"):
        writer.get_manifest("a/comfyui", DIGEST)
    assert len(waits) == 3
