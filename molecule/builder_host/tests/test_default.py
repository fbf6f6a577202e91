"""Verify the converged builder host container (testinfra, through molecule's inventory)."""

from __future__ import annotations


def test_dockerd_answers(host):
    version = host.run("docker version --format '{{.Server.Version}}'")
    assert version.rc == 0, version.stderr
    assert version.stdout.strip().split(".")[0].isdigit()


def test_buildx_runs_with_a_modern_buildkit(host):
    buildx = host.run("docker buildx version")
    assert buildx.rc == 0, buildx.stderr
    inspect = host.check_output("docker buildx inspect")
    assert "Driver:" in inspect and "docker" in inspect


def test_daemon_json_has_log_rotation(host):
    daemon = host.file("/etc/docker/daemon.json")
    assert daemon.exists
    assert '"max-size": "20m"' in daemon.content_string


def test_registry_answers_on_loopback(host):
    assert host.run("curl -fsS http://127.0.0.1:5000/v2/").rc == 0


def test_small_image_builds_and_is_pushed(host):
    ctx = "/tmp/molecule-hello"
    host.run(f"rm -rf {ctx} && mkdir -p {ctx}")
    host.run(f"echo hello-from-molecule > {ctx}/hello.txt")
    host.run(f"printf 'FROM scratch\\nCOPY --link hello.txt /hello.txt\\n' > {ctx}/Dockerfile")
    build = host.run(
        f"docker buildx build --progress=plain --tag 127.0.0.1:5000/molecule/hello:1 --push {ctx}"
    )
    assert build.rc == 0, build.stderr
    tags = host.check_output("curl -fsS http://127.0.0.1:5000/v2/molecule/hello/tags/list")
    assert '"1"' in tags
    digest = host.check_output(
        "curl -fsSI -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "
        "-H 'Accept: application/vnd.oci.image.manifest.v1+json' "
        "-H 'Accept: application/vnd.oci.image.index.v1+json' "
        "http://127.0.0.1:5000/v2/molecule/hello/manifests/1"
    )
    assert "sha256:" in digest.lower()
