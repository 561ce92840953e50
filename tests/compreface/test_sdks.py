"""CompreFace's official client libraries drive a real MarginFace server (``marginface serve``
in its own process) through their documented examples: the Python SDK (compreface-sdk, in its
own venv: it pins requests-toolbelt 0.9.1, which needs urllib3<2) and the JavaScript SDK
(@exadel/compreface-js-sdk, run with the machine's Node.js). Both are installed by
scripts/compreface_sdks.sh from PyPI and npm into .cache/ (git-ignored), once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import free_port
from tests.conftest import API_KEY, DATA, ROOT, lfw
from tests.test_server import server

HERE = Path(__file__).resolve().parent
SDKS = ROOT / ".cache" / "compreface-sdks"
PHOTOS = {
    "powell_enroll.jpg": lfw("Colin_Powell", 2),
    "powell_probe.jpg": lfw("Colin_Powell", 3),
    "bush_enroll.jpg": lfw("George_W_Bush", 2),
    "bush_probe.jpg": lfw("George_W_Bush", 3),
    "group.jpg": DATA / "detection" / "insightface" / "t1.jpg",
}


@pytest.fixture(scope="module")
def sdks() -> Path:
    """Both SDKs, installed by the script CI runs (a failure here is a failed test: CI has
    PyPI and npm)."""
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "compreface_sdks.sh"), str(SDKS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return SDKS


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A real server (photos kept, as CompreFace keeps them) and a folder with the photos."""
    port = free_port()
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, source in PHOTOS.items():
        shutil.copyfile(source, photos / name)
    env = {
        "MARGINFACE_PRIVACY__KEEP_IMAGES": "true",
        "MARGINFACE_PRIVACY__IMAGES_DIR": str(tmp_path / "images"),
    }
    with server(tmp_path / "gallery", port, env):
        yield "http://127.0.0.1", str(port), photos


def box_holds(box: dict[str, Any], size: tuple[int, int] = (250, 250)) -> bool:
    """A box of a sane face on a 250x250 LFW frame: inside it, and around its centre."""
    w, h = size
    inside = 0 <= box["x_min"] < box["x_max"] <= w and 0 <= box["y_min"] < box["y_max"] <= h
    cx, cy = (box["x_min"] + box["x_max"]) / 2, (box["y_min"] + box["y_max"]) / 2
    return inside and abs(cx - w / 2) < 40 and abs(cy - h / 2) < 40 and box["probability"] > 0.8


@pytest.mark.slow
def test_python_sdk_documented_examples(sdks: Path, served: tuple[str, str, Path]) -> None:
    url, port, photos = served
    out = photos / "python.json"
    run = subprocess.run(
        [str(sdks / "py" / "bin" / "python"), str(HERE / "sdk_python.py"), url, port, API_KEY,
         str(photos), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["add_subject"] == {"subject": "Colin Powell"}
    assert s["add_subject_again"]["code"] == 43
    assert s["update_subject"] == {"updated": True}
    assert s["add_powell"]["subject"] == "Colin L Powell"
    assert s["add_bush"]["subject"] == "George W Bush"  # created by adding an example
    assert s["add_group"]["code"] == 31  # an example must hold one face
    # the refused example created no subject (CompreFace checks the faces before saving)
    assert sorted(s["list_subjects"]["subjects"]) == ["Colin L Powell", "George W Bush"]
    assert s["list_faces"]["total_elements"] == 2
    for probe, who in (("recognize_powell", "Colin L Powell"), ("recognize_bush", "George W Bush")):
        (face,) = s[probe]["result"]
        assert box_holds(face["box"])
        assert face["subjects"][0]["subject"] == who and face["subjects"][0]["similarity"] > 0.6
        assert "execution_time" in face and "plugins_versions" in s[probe]  # status=true
    group = s["recognize_group"]["result"]
    assert len(group) == 6 and all(f["subjects"][0]["similarity"] < 0.4 for f in group)
    assert s["verify_example_same"]["result"][0]["similarity"] > 0.6
    assert s["verify_example_other"]["result"][0]["similarity"] < 0.4
    assert s["detect_age_gender"]["code"] == 36  # no age or gender model: refused, not faked
    assert "age" in s["detect_age_gender"]["message"]
    assert len(s["detect"]["result"]) == 6
    assert all(len(f["landmarks"]) == 5 for f in s["detect"]["result"])
    same, other = s["verify_same"]["result"][0], s["verify_other"]["result"][0]
    assert box_holds(same["source_image_face"]["box"])
    assert same["face_matches"][0]["similarity"] > 0.6
    assert other["face_matches"][0]["similarity"] < 0.4
    assert s["delete_example"]["subject"] in {"Colin L Powell", "George W Bush"}
    assert s["delete_all_examples"]["deleted"] in {0, 1}
    assert s["delete_subject"] == {"subject": "George W Bush"}
    assert s["delete_all_subjects"]["deleted"] == 1
    assert s["list_after"] == {"subjects": []}


@pytest.mark.slow
def test_javascript_sdk_documented_examples(sdks: Path, served: tuple[str, str, Path]) -> None:
    url, port, photos = served
    node = shutil.which("node")
    assert node is not None, "Node.js is needed (scripts/compreface_sdks.sh installs it)"
    index = sdks / "js" / "node_modules" / "@exadel" / "compreface-js-sdk" / "index.js"
    out = photos / "js.json"
    run = subprocess.run(
        [node, str(HERE / "sdk_js.mjs"), str(index), url, port, API_KEY, str(out)],
        cwd=photos, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["add_subject"] == {"subject": "Tom"}
    assert s["list_subjects"] == {"subjects": ["Tom"]}
    assert s["rename_subject"] == {"updated": True}
    assert s["add_powell"]["subject"] == "Colin Powell"
    assert s["add_bush"]["subject"] == "George W Bush"  # base64, subject created
    assert s["list_faces"]["total_elements"] == 2
    (powell,) = s["recognize_powell"]["result"]
    assert box_holds(powell["box"])
    assert [x["subject"] for x in powell["subjects"]] == ["Colin Powell"]
    assert powell["subjects"][0]["similarity"] > 0.6
    (bush,) = s["recognize_bush"]["result"]
    assert [x["subject"] for x in bush["subjects"]] == ["George W Bush", "Colin Powell"]
    assert bush["subjects"][0]["similarity"] > 0.6 > 0.4 > bush["subjects"][1]["similarity"]
    assert len(bush["landmarks"]) == 5
    assert s["verify_example"]["result"][0]["similarity"] > 0.6
    assert len(s["detect"]["result"]) == 6
    assert s["detect_age"]["failed"] and s["detect_age"]["status"] == 400
    assert s["detect_age"]["body"]["code"] == 36
    assert s["verify_same"]["result"][0]["face_matches"][0]["similarity"] > 0.6
    assert s["verify_other"]["result"][0]["face_matches"][0]["similarity"] < 0.4
    assert s["delete_example"]["subject"] == "George W Bush"
    assert s["delete_all_examples"] == {"deleted": 1}
    assert s["delete_subject"] == {"subject": "George W Bush"}
    assert s["list_after"] == {"subjects": ["Colin Powell"]}


def test_sdks_are_not_in_the_project_venv() -> None:
    """compreface-sdk pins urllib3<2 through requests-toolbelt: it must never land here."""
    probe = subprocess.run([sys.executable, "-c", "import compreface"], capture_output=True)
    assert probe.returncode != 0
