"""module_utils/package_layers.py: resolution, zero-duplication assignment, file collisions."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.package_layers import (
    Collision,
    CollisionError,
    Dep,
    Layer,
    LayerError,
    Resolution,
    ResolvedDist,
    ResolveError,
    ResolveOptions,
    apply_overrides,
    assign_layers,
    check_collisions,
    closure,
    constraints_text,
    find_collisions,
    inputs_key,
    install_path,
    override_conflicts,
    parse_record,
    parse_report,
    pip_arguments,
    platform_tags,
    read_wheel_record,
    resolve,
    resolve_inputs,
    target_environment,
    union_specs,
)
from hypothesis import given, settings
from hypothesis import strategies as st

ENV = target_environment("3.11", "manylinux_2_28_x86_64")
SHA = "ab" * 32


def dist(name: str, *deps: str | Dep, version: str = "1.0") -> ResolvedDist:
    edges = tuple(sorted(d if isinstance(d, Dep) else Dep(d) for d in deps))
    return ResolvedDist(name, version, edges, f"https://files.example/{name}.whl", SHA)


def graph_of(*dists: ResolvedDist) -> dict[str, ResolvedDist]:
    return {d.name: d for d in dists}


# --- target environment ----------------------------------------------------------------------


def test_target_environment() -> None:
    assert ENV["python_version"] == "3.11" and ENV["python_full_version"] == "3.11.0"
    assert ENV["platform_machine"] == "x86_64" and ENV["sys_platform"] == "linux"
    arm = target_environment("3.12.4", "manylinux_2_28_aarch64")
    assert arm["python_full_version"] == "3.12.4" and arm["platform_machine"] == "aarch64"
    with pytest.raises(ValueError, match=r"write e\.g\. '3\.11'"):
        target_environment("311", "manylinux_2_28_x86_64")
    with pytest.raises(ValueError, match=r"write e\.g\. manylinux_2_28_x86_64"):
        target_environment("3.11", "win_amd64")


# --- parsing pip's report --------------------------------------------------------------------


def report_item(name: str, version: str, requires: list[str] | None = None, **extra: Any) -> dict:
    metadata: dict[str, Any] = {"name": name, "version": version}
    if requires is not None:
        metadata["requires_dist"] = requires
    metadata.update(extra.pop("metadata", {}))
    item = {
        "metadata": metadata,
        "download_info": {
            "url": f"https://files.example/{name}-{version}.whl",
            "archive_info": {"hashes": {"sha256": SHA}},
        },
        "is_direct": False,
    }
    item.update(extra)
    return item


def test_parse_report_evaluates_markers_for_the_target() -> None:
    report = {
        "install": [
            report_item(
                "Requests",
                "2.32.0",
                [
                    "idna<4",
                    'PySocks>=1.5.6; extra == "socks"',
                    'colorama; sys_platform == "win32"',
                    'tomli; python_version < "3.11"',
                    "backports-zstd; python_version < '3.14' and extra == 'zstd'",
                    'typing-extensions; python_version >= "3.11"',
                ],
                metadata={"provides_extra": ["socks"]},
            ),
            report_item("idna", "3.7"),
            report_item(
                "pkg-vcs",
                "0.1",
                download_info={"url": "https://git.example/x", "vcs_info": {"commit_id": "c0ffee"}},
                is_direct=True,
            ),
        ]
    }
    resolution = parse_report(report, ENV, key="k")
    graph = resolution.by_name()
    assert list(graph) == ["idna", "pkg-vcs", "requests"]
    assert graph["requests"].deps == (
        Dep("backports-zstd", (), "zstd"),  # extra found in the marker, not provides_extra
        Dep("idna"),
        Dep("pysocks", (), "socks"),
        Dep("typing-extensions"),
    )
    assert graph["requests"].sha256 == SHA and graph["requests"].pin == "requests==2.32.0"
    assert graph["pkg-vcs"].pin == "pkg-vcs @ git+https://git.example/x@c0ffee"
    assert graph["pkg-vcs"].sha256 is None
    assert resolution.key == "k" and dict(resolution.environment) == ENV
    old = {"install": [report_item("a", "1")]}
    old["install"][0]["download_info"]["archive_info"] = {"hash": f"sha256={SHA}"}
    assert parse_report(old, ENV).dists[0].sha256 == SHA


def test_parse_report_errors() -> None:
    with pytest.raises(ResolveError, match=r"Fix: use pip >= 22\.2"):
        parse_report({}, ENV)
    with pytest.raises(ResolveError, match="appears twice"):
        parse_report({"install": [report_item("a", "1"), report_item("A", "2")]}, ENV)
    with pytest.raises(LayerError, match=r"(?s)not a pip requirement .* Fix"):
        parse_report({"install": [report_item("a", "1", ["b >>= 1"])]}, ENV)


# --- assignment ------------------------------------------------------------------------------


def test_first_layer_that_needs_a_distribution_gets_it() -> None:
    graph = graph_of(
        dist("numpy", version="2.1.0"),
        dist("scipy", "numpy"),
        dist("requests", "idna", Dep("pysocks", (), "socks")),
        dist("idna"),
        dist("pysocks"),
        dist("transformers", "numpy", "requests", "tokenizers"),
        dist("tokenizers"),
    )
    without_socks = {name: d for name, d in graph.items() if name != "pysocks"}
    layers = assign_layers(
        [("essentials", ["numpy", "requests"]), ("extended", ["transformers", "scipy"])],
        without_socks,
        ENV,
    )
    assert [layer.name for layer in layers] == ["essentials", "extended"]
    assert layers[0].pins == ("idna==1.0", "numpy==2.1.0", "requests==1.0")
    assert layers[1].pins == ("scipy==1.0", "tokenizers==1.0", "transformers==1.0")
    with pytest.raises(LayerError, match=r"pysocks, which no layer needs\. Fix"):
        assign_layers(
            [("a", ["requests"])], graph_of(graph["requests"], graph["idna"], graph["pysocks"]), ENV
        )
    extras = assign_layers(
        [("a", ["requests"]), ("b", ["requests[socks]"])],
        graph_of(graph["requests"], graph["idna"], graph["pysocks"]),
        ENV,
    )
    assert extras[1].pins == ("pysocks==1.0",)  # the extra's dependency waits for layer b


def test_spec_markers_use_the_target_environment() -> None:
    graph = graph_of(dist("a"), dist("b"))
    layers = assign_layers([("x", ["a", 'b; sys_platform == "win32"']), ("y", ["b"])], graph, ENV)
    assert layers[0].pins == ("a==1.0",) and layers[1].pins == ("b==1.0",)


def test_assignment_errors_name_the_layer_and_fix() -> None:
    graph = graph_of(dist("a", "missing"))
    with pytest.raises(LayerError, match=r"^layer x: a==1.0 requires missing.*Fix"):
        assign_layers([("x", ["a"])], graph, ENV)
    with pytest.raises(LayerError, match=r"^layer y: zzz is needed .* Fix"):
        assign_layers([("x", ["a"]), ("y", ["zzz"])], graph_of(dist("a")), ENV)
    # layers are named by where they are configured, whatever layers come before them
    labels = {"y": "package_layers[0] (y)"}
    with pytest.raises(LayerError, match=r"^package_layers\[0\] \(y\): zzz is needed"):
        assign_layers([("torch", ["a"]), ("y", ["zzz"])], graph_of(dist("a")), ENV, labels)
    with pytest.raises(ValueError, match="pass env=target_environment"):
        assign_layers([("x", ["a"])], graph_of(dist("a")))


def test_resolution_carries_its_environment() -> None:
    resolution = Resolution((dist("a"),), tuple(sorted(ENV.items())))
    assert assign_layers([("x", ["a"])], resolution)[0].pins == ("a==1.0",)


def test_requirements_and_constraints_text() -> None:
    layers = [Layer("one", (dist("b", version="2"),)), Layer("two", (dist("a"),))]
    assert layers[0].requirements_text() == f"b==2 --hash=sha256:{SHA}\n"
    assert layers[0].requirements_text(hashes=False) == "b==2\n"
    assert constraints_text(layers) == "a==1.0\nb==2\n"
    unhashed = Layer("three", (ResolvedDist("c", "1", url="git+https://x@1", direct_url=True),))
    assert unhashed.requirements_text(hashes=False) == "c @ git+https://x@1\n"
    with pytest.raises(LayerError, match=r"layer three: .* Fix: pin a wheel"):
        unhashed.requirements_text()


# --- properties on generated graphs ----------------------------------------------------------


@st.composite
def layered_graphs(draw: st.DrawFn) -> tuple[dict[str, ResolvedDist], list, int, list[str]]:
    size = draw(st.integers(1, 12))
    names = [f"p{i}" for i in range(size)]
    full: dict[str, ResolvedDist] = {}
    for name in names:
        base = draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
        extra = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
        deps = [Dep(d) for d in base] + [Dep(d, (), "x") for d in extra]
        full[name] = dist(name, *deps, version=str(draw(st.integers(0, 3))))
    spec = st.sampled_from(names).flatmap(lambda n: st.sampled_from([n, f"{n}[x]"]))
    layer_count = draw(st.integers(1, 4))
    layers = [(f"l{i}", draw(st.lists(spec, min_size=1, max_size=3))) for i in range(layer_count)]
    changed = draw(st.integers(0, layer_count - 1))
    new_specs = draw(st.lists(spec, min_size=1, max_size=3))
    return full, layers, changed, new_specs


def resolved_for(full: dict[str, ResolvedDist], layers: list) -> dict[str, ResolvedDist]:
    """What a resolver returns: exactly the closure of the union of the layers' specs."""
    names = closure(union_specs(layers), full, ENV)
    return {name: full[name] for name in names}


def check_invariants(layers_in: list, graph: dict[str, ResolvedDist]) -> list[Layer]:
    layers = assign_layers(layers_in, graph, ENV)
    placed = [d.name for layer in layers for d in layer.dists]
    assert sorted(placed) == sorted(graph)  # every distribution in exactly one layer
    pinned = {pin.split("==")[0] for layer in layers for pin in layer.pins}
    assert len(pinned) == len(placed)  # one version per name
    installed: set[str] = set()
    for layer, (_, specs) in zip(layers, layers_in, strict=True):
        assert not (layer.names & installed)  # nothing an earlier layer holds
        installed |= layer.names
        for spec in specs:  # after this layer, its specs and all their deps are present
            name, _, extra = spec.partition("[")
            assert name in installed
            if extra:
                assert all(d.name in installed for d in graph[name].deps if d.when_extra == "x")
        for name in installed:  # installing with --no-deps leaves nothing missing
            assert all(d.name in installed for d in graph[name].deps if d.when_extra == "")
    return layers


@settings(max_examples=150, deadline=None)
@given(layered_graphs())
def test_assignment_invariants(case: tuple) -> None:
    full, layers_in, changed, new_specs = case
    before = check_invariants(layers_in, resolved_for(full, layers_in))
    edited = [*layers_in[:changed], (layers_in[changed][0], new_specs), *layers_in[changed + 1 :]]
    after = check_invariants(edited, resolved_for(full, edited))
    assert after[:changed] == before[:changed]  # layers before the edit are identical


# --- overrides and collisions ----------------------------------------------------------------


def opencv_resolution() -> Resolution:
    return Resolution(
        (
            dist("albumentations", "opencv-python-headless", "numpy"),
            dist("insightface", "opencv-python", "numpy"),
            dist("numpy"),
            dist("opencv-python", "numpy"),
            dist("opencv-python-headless", "numpy"),
        ),
        tuple(sorted(ENV.items())),
    )


def test_replace_points_requirements_at_the_replacement() -> None:
    layers_in = [("essentials", ["numpy", "albumentations"]), ("face", ["insightface"])]
    pruned = apply_overrides(
        opencv_resolution(), layers_in, replace={"opencv-python": "opencv-python-headless"}
    )
    assert [d.name for d in pruned.dists] == [
        "albumentations",
        "insightface",
        "numpy",
        "opencv-python-headless",
    ]
    assert Dep("opencv-python-headless") in pruned.by_name()["insightface"].deps
    layers = assign_layers(layers_in, pruned)
    assert layers[1].pins == ("insightface==1.0",)


def test_exclude_drops_the_distribution_and_what_only_it_needed() -> None:
    resolution = Resolution(
        (*opencv_resolution().dists, dist("only-for-cv", "numpy")), opencv_resolution().environment
    )
    resolution = Resolution(
        tuple(
            dist("opencv-python", "numpy", "only-for-cv") if d.name == "opencv-python" else d
            for d in resolution.dists
        ),
        resolution.environment,
    )
    layers_in = [("face", ["insightface", "albumentations"])]
    pruned = apply_overrides(resolution, layers_in, exclude=["OpenCV_Python"])
    names = {d.name for d in pruned.dists}
    assert "opencv-python" not in names and "only-for-cv" not in names
    assert assign_layers(layers_in, pruned)[0].names == names


def test_override_errors_name_where_and_fix() -> None:
    with pytest.raises(LayerError, match=r"^layer x.specs\[1\]: .*package_layers_exclude.*Fix"):
        apply_overrides(opencv_resolution(), [("x", ["numpy", "opencv-python"])], ["opencv-python"])
    # every conflict at once, each layer named by its label, not by its position in the plan
    layers_in = [
        ("torch", ["numpy"]),
        ("pak1", ["opencv-python"]),
        ("pak3", ["insightface", "opencv-python-headless"]),
    ]
    labels = {"pak1": "package_layers[0] (pak1)", "pak3": "package_layers[2] (pak3)"}
    problems = override_conflicts(
        layers_in, ["opencv-python"], {"opencv-python-headless": "numpy"}, labels
    )
    assert [p.split(":")[0] for p in problems] == [
        "package_layers[0] (pak1).specs[0]",
        "package_layers[2] (pak3).specs[1]",
    ]
    assert "package_layers_exclude removes" in problems[0]
    assert "serves with numpy. Fix: request numpy there instead" in problems[1]
    with pytest.raises(LayerError, match=r"opencv-contrib-python is not in the resolution.*Fix"):
        apply_overrides(
            opencv_resolution(),
            [("x", ["insightface"])],
            replace={"opencv-python": "opencv-contrib-python"},
        )
    with pytest.raises(ValueError, match="carries no target environment"):
        apply_overrides(Resolution((dist("a"),)), [("x", ["a"])])


OPENCV_FILES = ["cv2/__init__.py", "cv2/cv2.abi3.so", "cv2/data/__init__.py"]


def opencv_records() -> dict[str, list[str]]:
    records = {}
    for name in ("opencv-python", "opencv-python-headless", "opencv-contrib-python"):
        dist_info = name.replace("-", "_") + "-4.10.0.dist-info"
        records[name] = [*OPENCV_FILES, f"{dist_info}/RECORD", f"{dist_info}/METADATA"]
    records["protobuf"] = ["google/protobuf/__init__.py", "google/_upb/x.so"]
    records["googleapis-common-protos"] = ["google/api/annotations.py"]  # a namespace, no clash
    records["numpy"] = [
        "numpy/__init__.py",
        "numpy/__pycache__/__init__.cpython-311.pyc",
        "numpy-2.1.0.data/scripts/f2py",
    ]
    records["f2py-shim"] = ["f2py_shim-1.data/scripts/f2py", "f2py_shim/__init__.py"]
    return records


def test_find_collisions() -> None:
    collisions = find_collisions(opencv_records())
    assert collisions == [
        Collision(("f2py-shim", "numpy"), ("<scripts>/",), ("<scripts>/f2py",)),
        Collision(
            ("opencv-contrib-python", "opencv-python", "opencv-python-headless"),
            ("cv2/",),
            tuple(sorted(OPENCV_FILES)),
        ),
    ]
    assert collisions[1].describe() == (
        "opencv-contrib-python, opencv-python, opencv-python-headless all write cv2/ "
        "(3 files, e.g. cv2/__init__.py)"
    )


def test_check_collisions_and_the_config_that_removes_them() -> None:
    records = opencv_records()
    del records["f2py-shim"]
    with pytest.raises(CollisionError) as info:
        check_collisions(records)
    message = str(info.value)
    assert "opencv-contrib-python, opencv-python, opencv-python-headless all write cv2/" in message
    assert "Fix: keep one of each group, e.g. package_layers_replace:" in message
    assert "package_layers_exclude: [opencv-contrib-python]" in message
    with pytest.raises(CollisionError, match="opencv-python, opencv-python-headless all write"):
        check_collisions(records, exclude=["opencv-contrib-python"])
    check_collisions(
        records,
        exclude=["opencv-contrib-python"],
        replace={"opencv-python": "opencv-python-headless"},
    )


def test_install_path() -> None:
    assert install_path("x-1.dist-info/RECORD") is None
    assert install_path("pkg/__pycache__/m.pyc") is None
    assert install_path("x-1.data/platlib/cv2/a.so") == "cv2/a.so"
    assert install_path("x-1.data/purelib/m.py") == "m.py"
    assert install_path("x-1.data/headers/h.h") == "<headers>/h.h"
    assert install_path("six.py") == "six.py"


def test_parse_and_read_wheel_record(tmp_path: Path) -> None:
    record = 'cv2/__init__.py,sha256=abc,10\n"odd,name.py",sha256=def,5\nx-1.dist-info/RECORD,,\n'
    assert parse_record(record) == ["cv2/__init__.py", "odd,name.py", "x-1.dist-info/RECORD"]
    wheel = tmp_path / "x-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("cv2/__init__.py", "")
        archive.writestr("x-1.dist-info/RECORD", record)
    assert read_wheel_record(wheel) == parse_record(record)
    bad = tmp_path / "bad-1-py3-none-any.whl"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("cv2/__init__.py", "")
    with pytest.raises(ValueError, match=r"holds 0 \.dist-info/RECORD files.*Fix"):
        read_wheel_record(bad)


# --- resolve: real pip, offline, against wheels this test writes -----------------------------


def write_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{module}/__init__.py": "",
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{dist_info}/RECORD"] = "".join(f"{p},,\n" for p in [*files, f"{dist_info}/RECORD"])
    with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    house = tmp_path / "wheels"
    house.mkdir()
    write_wheel(house, "alpha", "1.0")
    write_wheel(house, "alpha", "2.0")
    write_wheel(house, "beta", "1.0", ("alpha>=1", 'gamma; sys_platform == "win32"'))
    write_wheel(house, "gamma", "1.0")
    write_wheel(house, "delta", "3.0", ("beta",))
    return house


def offline(house: Path, **fields: Any) -> ResolveOptions:
    return ResolveOptions(no_index=True, find_links=(str(house),), **fields)


LAYERS = [("one", ["beta"]), ("two", ["delta"])]


def test_resolve_runs_pip_once_and_caches(
    wheelhouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "0")  # host pip settings must not leak in
    cache = tmp_path / "cache"
    resolution = resolve(LAYERS, "3.11", "manylinux_2_28_x86_64", (), offline(wheelhouse), cache)
    assert [(d.name, d.version) for d in resolution.dists] == [
        ("alpha", "2.0"),
        ("beta", "1.0"),
        ("delta", "3.0"),
    ]
    assert all(d.sha256 and d.url.startswith("file:") for d in resolution.dists)
    files = list(cache.iterdir())
    assert [f.name for f in files] == [f"resolution-{resolution.key}.json"]
    assert json.loads(files[0].read_text())["inputs"]["specs"] == ["beta", "delta"]
    layers = assign_layers(LAYERS, resolution)
    assert [layer.pins for layer in layers] == [("alpha==2.0", "beta==1.0"), ("delta==3.0",)]
    # Same inputs: answered from the cache; a pip that cannot run proves pip is not called.
    broken = offline(wheelhouse, pip_command=("false",))
    again = resolve(LAYERS, "3.11", "manylinux_2_28_x86_64", (), broken, cache)
    assert again == resolution
    # Changed inputs (a constraint) miss the cache and resolve again.
    with pytest.raises(ResolveError, match="exit 1"):
        resolve(LAYERS, "3.11", "manylinux_2_28_x86_64", ("alpha<2",), broken, cache)
    pinned = resolve(LAYERS, "3.11", "manylinux_2_28_x86_64", ("alpha<2",), offline(wheelhouse))
    assert pinned.by_name()["alpha"].version == "1.0" and pinned.key != resolution.key


def test_host_pip_config_is_ignored_unless_inherited(
    wheelhouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_constraint = tmp_path / "host-constraints.txt"
    host_constraint.write_text("alpha<2\n")
    monkeypatch.setenv("PIP_CONSTRAINT", str(host_constraint))
    isolated = resolve(LAYERS, "3.11", "manylinux_2_28_x86_64", (), offline(wheelhouse))
    assert isolated.by_name()["alpha"].version == "2.0"
    inherited = resolve(
        LAYERS, "3.11", "manylinux_2_28_x86_64", (), offline(wheelhouse, inherit_pip_config=True)
    )
    assert inherited.by_name()["alpha"].version == "1.0"
    assert inherited.key != isolated.key


def test_resolve_failure_carries_pips_reason_and_the_fix(wheelhouse: Path) -> None:
    with pytest.raises(ResolveError) as info:
        resolve([("one", ["alpha>5"])], "3.11", "manylinux_2_28_x86_64", (), offline(wheelhouse))
    message = str(info.value)
    assert message.startswith(
        "no index or wheelhouse has (for python 3.11 on manylinux_2_28_x86_64) alpha>5 (a layer "
        "spec; versions there: 1.0, 2.0, no wheel for the target, no sdist)"
    )
    assert "Fix: check each name and version" in message
    with pytest.raises(ResolveError) as info:  # a conflict is pip's own reason
        resolve([("one", ["alpha<2", "beta"]), ("two", ["alpha>1"])], "3.11",
                "manylinux_2_28_x86_64", (), offline(wheelhouse))  # fmt: skip
    message = str(info.value)
    assert "python 3.11 on manylinux_2_28_x86_64" in message
    assert "alpha" in message and "Fix: relax or change the specs" in message


def test_resolve_nothing_and_bad_target() -> None:
    empty = resolve([], "3.11", "manylinux_2_28_x86_64")
    assert empty.dists == () and dict(empty.environment) == ENV
    with pytest.raises(ValueError, match="manylinux_2_28_x86_64"):
        resolve(LAYERS, "3.11", "macosx_14_0_arm64")


def test_pip_arguments_target_the_platform_not_the_host() -> None:
    args = pip_arguments(
        "3.12",
        "manylinux_2_28_aarch64",
        ResolveOptions(
            index_url="https://pypi.org/simple",
            extra_index_urls=("https://download.pytorch.org/whl/cu128",),
            cert="/ca.pem",
            pip_command=("pip",),
        ),
        "/r.json",
        "/t",
        "/req.txt",
        "/c.txt",
    )
    text = " ".join(args)
    assert args[:2] == ["pip", "install"]
    for fragment in (
        "--dry-run --ignore-installed",
        "--report /r.json --target /t",
        "--python-version 3.12 --implementation cp --abi cp312",
        "--platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64",
        "--platform manylinux2014_aarch64 --platform manylinux_2_16_aarch64",
        "--platform manylinux_2_5_aarch64 --only-binary=:all:",
        "--index-url https://pypi.org/simple",
        "--extra-index-url https://download.pytorch.org/whl/cu128",
        "--cert /ca.pem --constraint /c.txt --requirement /req.txt",
    ):
        assert fragment in text
    assert "--no-index" not in args
    assert "manylinux1_aarch64" not in args and "manylinux2010_aarch64" not in args


def test_platform_tags() -> None:
    tags = platform_tags("manylinux_2_28_x86_64")
    assert tags[:2] == ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64"]
    for legacy in ("manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"):
        assert legacy in tags
    assert tags[-1] == "manylinux1_x86_64" and "manylinux_2_29_x86_64" not in tags
    assert platform_tags("manylinux2014_aarch64")[0] == "manylinux_2_17_aarch64"
    assert platform_tags("linux_x86_64") == ["linux_x86_64"]
    with pytest.raises(ValueError, match=r"write e\.g\. manylinux_2_28_x86_64"):
        platform_tags("musllinux_1_2_x86_64")


def test_cache_key_covers_every_input(wheelhouse: Path) -> None:
    options = offline(wheelhouse)
    base = inputs_key(resolve_inputs(["a"], "3.11", "linux_x86_64", [], options))
    variants = [
        resolve_inputs(["a", "b"], "3.11", "linux_x86_64", [], options),
        resolve_inputs(["a"], "3.12", "linux_x86_64", [], options),
        resolve_inputs(["a"], "3.11", "manylinux_2_28_x86_64", [], options),
        resolve_inputs(["a"], "3.11", "linux_x86_64", ["torch==2.7.1"], options),
        resolve_inputs(["a"], "3.11", "linux_x86_64", [], ResolveOptions(index_url="https://x")),
    ]
    keys = {inputs_key(v) for v in variants}
    assert len(keys) == len(variants) and base not in keys
    write_wheel(wheelhouse, "epsilon", "1.0")  # a new wheel in the wheelhouse changes the key
    assert inputs_key(resolve_inputs(["a"], "3.11", "linux_x86_64", [], options)) != base
    assert union_specs([("x", ["a", "b"]), ("y", ["b", "c"])], ["d", "a"]) == ["a", "b", "c", "d"]
