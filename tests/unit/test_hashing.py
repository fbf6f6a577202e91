"""module_utils/hashing.py: reproducible tree and node hashes (BLD-7)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from ansible.module_utils.hashing import (
    canonical_json,
    file_sha256,
    hash_tree,
    is_hash,
    node_hash,
    short,
    tree_entries,
)


def make_tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)))
    script = root / "sub" / "deeper" / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (root / "link").symlink_to("sub/b.bin")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"cache")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "one" / "context")


def test_same_tree_at_two_absolute_paths_hashes_the_same(tree: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "deep" / "copy"
    shutil.copytree(tree, other, symlinks=True)
    assert hash_tree(tree) == hash_tree(other)
    built = make_tree(tmp_path / "rebuilt")  # made again from scratch, other inodes and times
    assert hash_tree(built) == hash_tree(tree)


def test_mtime_and_group_write_bits_change_nothing(tree: Path) -> None:
    before = hash_tree(tree)
    os.utime(tree / "a.txt", (1, 1))
    os.utime(tree / "sub", (2, 2))
    (tree / "a.txt").chmod(0o664)  # a different umask on another machine
    assert hash_tree(tree) == before


def test_one_byte_changes_the_hash(tree: Path) -> None:
    before = hash_tree(tree)
    data = bytearray((tree / "sub" / "b.bin").read_bytes())
    data[100] ^= 1
    (tree / "sub" / "b.bin").write_bytes(bytes(data))
    assert hash_tree(tree) != before


def test_executable_bit_changes_the_hash(tree: Path) -> None:
    before = hash_tree(tree)
    (tree / "a.txt").chmod(0o744)
    assert hash_tree(tree) != before
    (tree / "a.txt").chmod(0o644)
    assert hash_tree(tree) == before


def test_rename_empty_dir_and_symlink_target_change_the_hash(tree: Path) -> None:
    before = hash_tree(tree)
    (tree / "a.txt").rename(tree / "c.txt")
    renamed = hash_tree(tree)
    assert renamed != before
    (tree / "empty2").mkdir()
    with_dir = hash_tree(tree)
    assert with_dir != renamed
    (tree / "link").unlink()
    (tree / "link").symlink_to("c.txt")
    assert hash_tree(tree) != with_dir


def test_symlinks_are_hashed_by_target_text_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("v1")
    root = tmp_path / "root"
    root.mkdir()
    (root / "to-outside").symlink_to(outside)
    (root / "dir-link").symlink_to(tmp_path)  # a loop if it were followed
    before = hash_tree(root)
    outside.write_text("v2")
    assert hash_tree(root) == before
    kinds = {rel: kind for kind, rel, _ in tree_entries(root)}
    assert kinds == {"dir-link": "l", "to-outside": "l"}


def test_exclude_patterns(tree: Path) -> None:
    full = hash_tree(tree)
    excluded = hash_tree(tree, exclude=["__pycache__"])
    assert excluded != full
    (tree / "__pycache__" / "y.pyc").write_bytes(b"more")
    assert hash_tree(tree, exclude=["__pycache__"]) == excluded
    assert hash_tree(tree, exclude=["*.pyc", "__pycache__"]) == excluded
    rels = [rel for _, rel, _ in tree_entries(tree, exclude=["sub/deeper"])]
    assert "sub/deeper" not in rels and "sub/deeper/run.sh" not in rels and "sub/b.bin" in rels


def test_entries_are_sorted_relative_and_typed(tree: Path) -> None:
    entries = tree_entries(tree, exclude=["__pycache__"])
    rels = [rel for _, rel, _ in entries]
    assert rels == sorted(rels)
    assert not any(rel.startswith("/") or str(tree) in rel for rel in rels)
    by_rel = {rel: (kind, detail) for kind, rel, detail in entries}
    assert by_rel["empty"] == ("d", "")
    assert by_rel["link"] == ("l", "sub/b.bin")
    run_sha = hashlib.sha256(b"#!/bin/sh\necho hi\n").hexdigest()
    assert by_rel["sub/deeper/run.sh"] == ("f", f"x:{run_sha}")
    assert by_rel["a.txt"][1].startswith("-:")


def test_single_file(tmp_path: Path) -> None:
    one = tmp_path / "x" / "Dockerfile"
    two = tmp_path / "y" / "Dockerfile"
    for path in (one, two):
        path.parent.mkdir()
        path.write_text("FROM scratch\n")
    assert hash_tree(one) == hash_tree(two)
    assert file_sha256(one) == hashlib.sha256(b"FROM scratch\n").hexdigest()


def test_missing_path_and_special_files_fail_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; pass the directory"):
        hash_tree(tmp_path / "nope")
    root = tmp_path / "ctx"
    root.mkdir()
    os.mkfifo(root / "pipe.fifo")
    with pytest.raises(ValueError, match=r"pipe\.fifo is neither .* exclude it"):
        hash_tree(root)
    assert is_hash(hash_tree(root, exclude=["*.fifo"]))


def test_node_hash_is_canonical() -> None:
    a = node_hash({"dockerfile": "FROM x", "args": {"B": "2", "A": "1"}}, None)
    b = node_hash({"args": {"A": "1", "B": "2"}, "dockerfile": "FROM x"}, None)
    assert a == b and is_hash(a)
    assert node_hash({"tags": {"b", "a"}}, None) == node_hash({"tags": {"a", "b"}}, None)
    assert node_hash({"list": [1, 2]}, None) == node_hash({"list": (1, 2)}, None)


def test_node_hash_changes_with_any_input_and_the_parent() -> None:
    parent = node_hash({"os": "ubuntu:22.04"}, None)
    base = node_hash({"dockerfile": "FROM x"}, parent)
    assert base != node_hash({"dockerfile": "FROM x"}, None)
    assert base != node_hash({"dockerfile": "FROM y"}, parent)
    assert base != node_hash({"dockerfile": "FROM x", "extra": None}, parent)
    other_parent = node_hash({"os": "ubuntu:24.04"}, None)
    assert base != node_hash({"dockerfile": "FROM x"}, other_parent)


def test_node_hash_matches_the_documented_encoding() -> None:
    expected = hashlib.sha256(b'{"parent":null,"parts":{"a":1,"b":"\xc3\xa9"}}').hexdigest()
    assert node_hash({"b": "é", "a": 1}, None) == expected
    assert canonical_json({"b": [1, {"d": 0, "c": 1}]}) == '{"b":[1,{"c":1,"d":0}]}'


def test_node_hash_refuses_what_has_no_canonical_form() -> None:
    with pytest.raises(TypeError, match="make them relative strings"):
        node_hash({"context": Path("/abs/path")}, None)
    with pytest.raises(ValueError):
        node_hash({"x": float("nan")}, None)
    with pytest.raises(ValueError, match="pass the parent node's node_hash"):
        node_hash({"x": 1}, "not-a-hash")
    with pytest.raises(TypeError, match="name every part"):
        node_hash({1: "x"}, None)  # type: ignore[dict-item]


def test_short() -> None:
    h = node_hash({}, None)
    assert short(h) == h[:12] and len(short(h)) == 12
    with pytest.raises(ValueError, match="pass a node_hash"):
        short("abc")
    assert not is_hash(h.upper())
