"""module_utils/buildx.py: BuildKit version and capabilities from `docker buildx inspect`."""

from __future__ import annotations

import pytest
from ansible.module_utils.buildx import (
    BuilderCapabilities,
    capabilities,
    parse_inspect,
    version_tuple,
)

# (a) Recorded on the farm's build host: docker 20.10.24+dfsg1, buildx 0.13.1 (Debian), docker
# driver, classic image store. `docker buildx inspect` and `docker buildx version`, verbatim.
DOCKER_20_10_INSPECT = """\
Name:   default
Driver: docker

Nodes:
Name:             default
Endpoint:         default
Status:           running
BuildKit version: v0.8+unknown
Platforms:        linux/amd64, linux/386
"""
BUILDX_0_13_VERSION = "github.com/docker/buildx 0.13.1+ds1 0.13.1+ds1-3\n"

# (a') The same builder in the layout older buildx releases (0.6 - 0.10) print: node fields
# indented under `Nodes:` and BuildKit's version as `Buildkit:`.
DOCKER_20_10_INSPECT_INDENTED = """\
Name:          default
Driver:        docker

Nodes:
  Name:      default
  Endpoint:  default
  Status:    running
  Buildkit:  v0.8+unknown
  Platforms: linux/amd64, linux/386
"""

# (b) buildx 0.17 with a docker-container builder (two nodes, labels, GC policy).
DOCKER_CONTAINER_INSPECT = """\
Name:          farm
Driver:        docker-container
Last Activity: 2024-10-14 09:12:44 +0000 UTC

Nodes:
Name:                  farm0
Endpoint:              unix:///var/run/docker.sock
Driver Options:        network="host"
Status:                running
BuildKit daemon flags: --allow-insecure-entitlement=network.host
BuildKit version:      v0.16.0
Platforms:             linux/amd64*, linux/amd64/v2, linux/amd64/v3, linux/386
Labels:
 org.mobyproject.buildkit.worker.executor:         oci
 org.mobyproject.buildkit.worker.hostname:         6d1f1c1e2b3a
 org.mobyproject.buildkit.worker.network:          host
 org.mobyproject.buildkit.worker.oci.process-mode: sandbox
 org.mobyproject.buildkit.worker.selinux.enabled:  false
 org.mobyproject.buildkit.worker.snapshotter:      overlayfs
GC Policy rule#0:
 All:            false
 Filters:        type==source.local,type==exec.cachemount,type==source.git.checkout
 Keep Duration:  48h0m0s
 Keep Bytes:     488.3MiB
GC Policy rule#1:
 All:            true
 Keep Bytes:     9.313GiB

Name:                  farm1
Endpoint:              ssh://builder@10.0.0.7
Status:                running
BuildKit version:      v0.17.0
Platforms:             linux/arm64, linux/arm/v7
"""
BUILDX_0_17_VERSION = "github.com/docker/buildx v0.17.1 257815a\n"

# (c) docker 27 with the containerd image store (docker driver, embedded BuildKit).
CONTAINERD_STORE_INSPECT = """\
Name:          default
Driver:        docker
Last Activity: 2024-10-14 09:30:02 +0000 UTC

Nodes:
Name:             default
Endpoint:         default
Status:           running
BuildKit version: v0.15.2
Platforms:        linux/amd64, linux/amd64/v2, linux/amd64/v3, linux/386
Labels:
 org.mobyproject.buildkit.worker.moby.host-gateway-ip: 172.17.0.1
GC Policy rule#0:
 All:           false
 Filters:       type==source.local,type==exec.cachemount,type==source.git.checkout
 Keep Duration: 48h0m0s
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v0.13.2+ds1", (0, 13, 2)),
        ("0.13.1+ds1", (0, 13, 1)),
        ("v0.8+unknown", (0, 8)),
        ("v0.16.0", (0, 16, 0)),
        ("20.10.24+dfsg1", (20, 10, 24)),
        ("github.com/docker/buildx v0.17.1 257815a", (0, 17, 1)),
        ("", ()),
        ("unknown", ()),
    ],
)
def test_version_tuple(text: str, expected: tuple[int, ...]) -> None:
    assert version_tuple(text) == expected


def test_version_tuple_orders_numerically() -> None:
    assert version_tuple("v0.10.0") > version_tuple("v0.9.9")
    assert version_tuple("v0.8+unknown") < (0, 10)


def test_parse_inspect_real_docker_driver_output() -> None:
    fields = parse_inspect(DOCKER_20_10_INSPECT)
    assert fields == {
        "name": "default",
        "driver": "docker",
        "endpoint": "default",
        "status": "running",
        "buildkit version": "v0.8+unknown",
        "platforms": "linux/amd64, linux/386",
    }


def test_parse_inspect_reads_node_fields_indented_under_nodes() -> None:
    fields = parse_inspect(DOCKER_20_10_INSPECT_INDENTED)
    assert fields["name"] == "default"
    assert fields["driver"] == "docker"
    assert fields["buildkit"] == "v0.8+unknown"
    assert fields["platforms"] == "linux/amd64, linux/386"
    assert fields["status"] == "running"


def test_parse_inspect_builder_name_wins_over_node_name() -> None:
    fields = parse_inspect(DOCKER_CONTAINER_INSPECT)
    assert fields["name"] == "farm"
    assert fields["driver"] == "docker-container"
    # Values with colons survive; only the first colon splits.
    assert fields["endpoint"] == "unix:///var/run/docker.sock"
    assert fields["last activity"] == "2024-10-14 09:12:44 +0000 UTC"


def test_parse_inspect_reads_only_the_first_node() -> None:
    fields = parse_inspect(DOCKER_CONTAINER_INSPECT)
    assert fields["buildkit version"] == "v0.16.0"
    assert fields["platforms"].startswith("linux/amd64*")
    assert "linux/arm64" not in fields["platforms"]


def test_parse_inspect_skips_labels_and_gc_policy_blocks() -> None:
    fields = parse_inspect(DOCKER_CONTAINER_INSPECT)
    assert not any(key.startswith("org.mobyproject") for key in fields)
    for key in ("all", "filters", "keep duration", "keep bytes", "labels", "gc policy rule#0"):
        assert key not in fields


def test_parse_inspect_indented_labels_cannot_pose_as_node_fields() -> None:
    text = "Name: b\nDriver: remote\n\nNodes:\n  Name: b0\n  Labels:\n    Platforms: bogus\n"
    text += "  Platforms: linux/amd64\n"
    fields = parse_inspect(text)
    assert fields["platforms"] == "linux/amd64"


def test_parse_inspect_empty() -> None:
    assert parse_inspect("") == {}


def test_capabilities_buildx_0_13_on_docker_20_10() -> None:
    caps = capabilities(DOCKER_20_10_INSPECT, BUILDX_0_13_VERSION, "20.10.24+dfsg1\n", False)
    assert caps == BuilderCapabilities(
        name="default",
        driver="docker",
        buildkit_version="v0.8+unknown",
        buildx_version="0.13.1+ds1",
        engine_version="20.10.24+dfsg1",
        cache_export=("inline",),
        copy_link=False,
        attestations=False,
        platforms=("linux/amd64", "linux/386"),
    )


def test_capabilities_old_indented_layout_matches_the_flat_one() -> None:
    flat = capabilities(DOCKER_20_10_INSPECT, BUILDX_0_13_VERSION, "20.10.24", False)
    indented = capabilities(DOCKER_20_10_INSPECT_INDENTED, BUILDX_0_13_VERSION, "20.10.24", False)
    assert indented == flat


def test_capabilities_docker_container_driver() -> None:
    caps = capabilities(DOCKER_CONTAINER_INSPECT, BUILDX_0_17_VERSION, "27.3.1", False)
    assert caps.name == "farm"
    assert caps.driver == "docker-container"
    assert caps.buildkit_version == "v0.16.0"
    assert caps.buildx_version == "v0.17.1"
    assert caps.cache_export == ("inline", "registry", "local")
    assert caps.copy_link is True
    assert caps.attestations is True
    assert caps.platforms == ("linux/amd64", "linux/amd64/v2", "linux/amd64/v3", "linux/386")


def test_capabilities_docker_driver_with_containerd_store() -> None:
    caps = capabilities(CONTAINERD_STORE_INSPECT, BUILDX_0_17_VERSION, "27.3.1", True)
    assert caps.driver == "docker"
    assert caps.buildkit_version == "v0.15.2"
    assert caps.cache_export == ("inline", "registry", "local")
    assert caps.copy_link is True
    assert caps.attestations is True
    assert caps.platforms == ("linux/amd64", "linux/amd64/v2", "linux/amd64/v3", "linux/386")


def test_capabilities_docker_driver_classic_store_with_new_buildkit() -> None:
    # New BuildKit, but the classic image store can neither export cache nor keep attestations.
    caps = capabilities(CONTAINERD_STORE_INSPECT, BUILDX_0_17_VERSION, "27.3.1", False)
    assert caps.cache_export == ("inline",)
    assert caps.copy_link is True
    assert caps.attestations is False


def test_capabilities_without_buildkit_version() -> None:
    caps = capabilities("Name: x\nDriver: docker\n", "", "", False)
    assert caps.buildkit_version == ""
    assert caps.buildx_version == ""
    assert caps.copy_link is False
    assert caps.attestations is False
    assert caps.platforms == ()


def test_as_facts_is_json_friendly() -> None:
    facts = capabilities(DOCKER_20_10_INSPECT, BUILDX_0_13_VERSION, "20.10.24", False).as_facts()
    assert facts["cache_export"] == ["inline"]
    assert facts["platforms"] == ["linux/amd64", "linux/386"]
    assert facts["copy_link"] is False
