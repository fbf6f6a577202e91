"""install_nodes.py applies the image's package_layers_exclude/_replace to node requirements.

Seen with real packs: KJNodes and VideoHelperSuite require ``opencv-python`` while the base
layers hold ``opencv-python-headless``; installed as asked, a second distribution wrote
``cv2/`` and both packs failed at import (``libxcb.so.1`` missing). The layers' exclusions
must hold for the nodes as for every layer.
"""

from __future__ import annotations

import json

import install_nodes


def test_excluded_requirements_are_left_out_and_replaced_ones_renamed(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text(
        "# a comment\npillow>=10.3.0\nopencv-python>=4.7.0.72  # video\n"
        "Opencv_Contrib_Python\nimageio-ffmpeg\n--extra-index-url https://example.invalid\n"
    )
    overrides = {
        "exclude": ["opencv-contrib-python"],
        "replace": {"opencv-python": "opencv-python-headless"},
    }
    (tmp_path / "out").mkdir()
    out, notes = install_nodes.overridden_requirements(req, overrides, tmp_path / "out")
    lines = out.read_text().splitlines()
    assert "opencv-python-headless>=4.7.0.72" in lines
    assert not any(line.lower().startswith("opencv_contrib") for line in lines)
    assert "pillow>=10.3.0" in lines and "imageio-ffmpeg" in lines
    assert "--extra-index-url https://example.invalid" in lines
    assert notes == [
        "opencv-python -> opencv-python-headless (package_layers_replace)",
        "Opencv_Contrib_Python left out (package_layers_exclude)",
    ]


def test_no_overrides_installs_the_file_as_it_is(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("opencv-python\n")
    out, notes = install_nodes.overridden_requirements(
        req, {"exclude": [], "replace": {}}, tmp_path
    )
    assert out == req and notes == []


def test_overrides_file_names_are_canonical(tmp_path):
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"exclude": ["OpenCV_Python"], "replace": {"A.b": "c"}}))
    assert install_nodes.load_overrides(str(path)) == {
        "exclude": ["opencv-python"],
        "replace": {"a-b": "c"},
    }
    assert install_nodes.load_overrides(str(tmp_path / "absent.json")) == {
        "exclude": [],
        "replace": {},
    }
