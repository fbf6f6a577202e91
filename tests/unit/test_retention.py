"""module_utils/retention.py: which dated tags a nightly deletes, and which it must keep."""

from __future__ import annotations

from ansible.module_utils.registry import DeleteUnsupported, RegistryError
from ansible.module_utils.retention import dated_tags, decide, prune
from hypothesis import given
from hypothesis import strategies as st


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def test_dated_tags_newest_first_and_only_this_images():
    tags = ["a-cpu-20261101", "a-cpu-20261123", "a-cpu", "a-cpu-0123456789ab", "a-cpu-x-20261120",
            "a-cpu-2026112", "b-cpu-20261122", "a-cpu-20261110"]  # fmt: skip
    assert dated_tags(tags, "a-cpu") == ["a-cpu-20261123", "a-cpu-20261110", "a-cpu-20261101"]


def test_old_dated_tags_go_with_their_hash_tags():
    digests = {
        "a-cpu": digest(3),
        "a-cpu-20261123": digest(3),
        "a-cpu-20261122": digest(2),
        "a-cpu-20261121": digest(1),
        "a-cpu-0000000000aa": digest(1),  # the old image's hash tag goes along
    }
    decision = decide(digests, ["a-cpu"], keep=2)
    assert decision.delete == {digest(1): ["a-cpu-0000000000aa", "a-cpu-20261121"]}
    assert decision.kept == {}


def test_a_manifest_another_tag_names_is_kept_and_says_why():
    digests = {
        "a-cpu": digest(3),
        "a-cpu-20261123": digest(3),
        "a-cpu-20261101": digest(1),
        "prod": digest(1),  # a person pinned the old image
        "a-cpu-20261031": digest(3),  # the same image dated twice: the release tag holds it
    }
    decision = decide(digests, ["a-cpu"], keep=1)
    assert decision.delete == {}
    assert decision.kept["a-cpu-20261101"].startswith("prod still points at sha256:")
    assert "a-cpu, a-cpu-20261123 still points" in decision.kept["a-cpu-20261031"]


def test_what_this_run_pushed_is_never_deleted():
    digests = {"a-cpu-20261123": digest(2), "a-cpu-20261101": digest(1)}
    decision = decide(digests, ["a-cpu"], keep=1, protected=[digest(1)])
    assert decision.delete == {} and "in use by this run" in decision.kept["a-cpu-20261101"]


def test_an_old_image_the_plan_uses_again_is_kept():
    """An input reverted tonight: the plan finds the old hash tag (cached), pushes nothing."""
    digests = {
        "a-cpu": digest(3),
        "a-cpu-20261123": digest(3),
        "a-cpu-20261122": digest(2),
        "a-cpu-20261101": digest(1),
        "a-cpu-0000000000aa": digest(1),
    }
    decision = decide(digests, ["a-cpu"], keep=2, protected=["a-cpu-0000000000aa"])
    assert decision.delete == {} and "in use" in decision.kept["a-cpu-20261101"]


def test_another_images_hash_tag_keeps_a_shared_manifest():
    digests = {
        "a-cpu-20261123": digest(2),
        "a-cpu-20261101": digest(1),
        "b-cpu-0123456789ab": digest(1),
    }
    decision = decide(digests, ["a-cpu", "b-cpu"], keep=1)
    assert (
        decision.delete == {}
        and "b-cpu-0123456789ab still points" in decision.kept["a-cpu-20261101"]
    )


def test_keep_zero_keeps_everything():
    digests = {f"a-cpu-2026110{i}": digest(i) for i in range(1, 9)}
    assert decide(digests, ["a-cpu"], keep=0).delete == {}


def test_images_in_one_repository_do_not_touch_each_other():
    digests = {
        "a-cpu-20261123": digest(2),
        "a-cpu-20261101": digest(1),
        "b-cpu-20261101": digest(5),
    }
    decision = decide(digests, ["a-cpu", "b-cpu"], keep=1)
    assert decision.delete == {digest(1): ["a-cpu-20261101"]}


@given(
    st.dictionaries(
        st.sampled_from(
            [f"a-cpu-202611{d:02d}" for d in range(1, 29)]
            + ["a-cpu", "prod", "b-cpu-20261101", "a-cpu-0123456789ab"]
        ),
        st.integers(0, 6).map(digest),
        max_size=20,
    ),
    st.integers(1, 5),
)
def test_never_deletes_the_newest_or_anything_a_kept_tag_names(digests, keep):
    decision = decide(digests, ["a-cpu", "b-cpu"], keep)
    doomed = set(decision.delete)
    for image in ("a-cpu", "b-cpu"):
        for tag in dated_tags(digests, image)[:keep]:
            assert digests[tag] not in doomed
    for tag in ("a-cpu", "prod"):
        if tag in digests:
            assert digests[tag] not in doomed
    for tags in decision.delete.values():
        assert all(t in digests for t in tags)


class StandInRegistry:
    """A stand-in for a registry this machine cannot reach (GHCR refuses manifest deletes
    through the registry API); the real delete path runs in tests/docker/test_nightly.py."""

    def __init__(self, digests: dict[str, str], refuse: type[Exception] | None = None):
        self.digests, self.refuse, self.deleted = digests, refuse, []

    def tags(self, repository):
        return list(self.digests)

    def manifest_digest(self, repository, tag):
        return self.digests[tag]

    def delete_manifest(self, repository, digest):
        if self.refuse:
            raise self.refuse(f"refused {digest}")
        self.deleted.append(digest)


OLD = {"a-cpu-20261123": digest(3), "a-cpu-20261102": digest(2), "a-cpu-20261101": digest(1)}


def test_prune_deletes_and_a_dry_run_does_not():
    registry = StandInRegistry(dict(OLD))
    decision, errors = prune(registry, "org/comfyui", ["a-cpu"], keep=1, dry_run=True)
    assert set(decision.delete) == {digest(1), digest(2)} and registry.deleted == []
    decision, errors = prune(registry, "org/comfyui", ["a-cpu"], keep=1)
    assert sorted(registry.deleted) == [digest(1), digest(2)] and errors == []


def test_a_registry_that_refuses_deletes_is_a_warning_not_a_failure():
    registry = StandInRegistry(dict(OLD), refuse=DeleteUnsupported)
    decision, errors = prune(registry, "org/comfyui", ["a-cpu"], keep=1)
    assert errors == [] and decision.delete == {}
    assert decision.unsupported.startswith("refused sha256:")


def test_other_delete_errors_are_failures_and_the_rest_go_on():
    registry = StandInRegistry(dict(OLD), refuse=RegistryError)
    decision, errors = prune(registry, "org/comfyui", ["a-cpu"], keep=1)
    assert len(errors) == 2 and not decision.unsupported
