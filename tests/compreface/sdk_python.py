"""CompreFace's official Python SDK (compreface-sdk 0.6.0) through its documented examples,
against a MarginFace server. Run by tests/compreface/test_sdks.py with the SDK's own venv:
``python sdk_python.py URL PORT API_KEY PHOTOS_DIR OUT.json``. Each step's answer goes to
OUT.json; the test judges them (this script asserts nothing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from compreface import CompreFace  # type: ignore[import-not-found]


def main() -> None:
    domain, port, key, photos, out = sys.argv[1:6]
    p = Path(photos)
    steps: dict[str, Any] = {}
    # examples/add_subject.py, get_list_of_all_subjects.py, update_existing_subject.py
    compre_face = CompreFace(domain, port, {"det_prob_threshold": 0.8})
    recognition = compre_face.init_face_recognition(key)
    subjects = recognition.get_subjects()
    steps["add_subject"] = subjects.add("Colin Powell")
    steps["add_subject_again"] = subjects.add("Colin Powell")
    steps["update_subject"] = subjects.update("Colin Powell", "Colin L Powell")
    # examples/add_example_of_a_subject.py (a subject that does not exist is created)
    face_collection = recognition.get_face_collection()
    steps["add_powell"] = face_collection.add(str(p / "powell_enroll.jpg"), "Colin L Powell")
    steps["add_bush"] = face_collection.add(str(p / "bush_enroll.jpg"), "George W Bush")
    steps["add_group"] = face_collection.add(str(p / "group.jpg"), "Group")
    steps["list_subjects"] = subjects.list()
    steps["list_faces"] = face_collection.list()
    # examples/recognize_face_from_image.py
    compre_face = CompreFace(
        domain,
        port,
        {"limit": 0, "det_prob_threshold": 0.8, "prediction_count": 1, "status": "true"},
    )
    recognition = compre_face.init_face_recognition(key)
    steps["recognize_powell"] = recognition.recognize(str(p / "powell_probe.jpg"))
    steps["recognize_bush"] = recognition.recognize(str(p / "bush_probe.jpg"))
    steps["recognize_group"] = recognition.recognize(str(p / "group.jpg"))
    # examples/verification_face_from_image.py (verify against a saved example)
    compre_face = CompreFace(
        domain, port, {"limit": 0, "det_prob_threshold": 0.8, "status": "true"}
    )
    face_collection = compre_face.init_face_recognition(key).get_face_collection()
    face = next(
        item for item in face_collection.list().get("faces") if item["subject"] == "Colin L Powell"
    )
    steps["verify_example_same"] = face_collection.verify(
        str(p / "powell_probe.jpg"), face.get("image_id")
    )
    steps["verify_example_other"] = face_collection.verify(
        str(p / "bush_probe.jpg"), face.get("image_id")
    )
    # examples/detect_face_from_image.py (its plugins "age,gender" first, as documented: refused)
    for plugins, name in (("age,gender", "detect_age_gender"), ("landmarks", "detect")):
        compre_face = CompreFace(
            domain,
            port,
            {"limit": 0, "det_prob_threshold": 0.8, "face_plugins": plugins, "status": "true"},
        )
        detection = compre_face.init_face_detection(key)
        steps[name] = detection.detect(str(p / "group.jpg"))
    # examples/verify_face_from_image.py
    compre_face = CompreFace(
        domain,
        port,
        {"limit": 0, "det_prob_threshold": 0.8, "face_plugins": "landmarks", "status": "true"},
    )
    verify = compre_face.init_face_verification(key)
    steps["verify_same"] = verify.verify(str(p / "powell_enroll.jpg"), str(p / "powell_probe.jpg"))
    steps["verify_other"] = verify.verify(str(p / "powell_enroll.jpg"), str(p / "bush_probe.jpg"))
    # examples/delete_example_by_id.py, delete_all_examples_of_subject.py,
    # delete_subject_by_name.py, delete_all_subjects.py
    face_collection = CompreFace(domain, port).init_face_recognition(key).get_face_collection()
    faces = face_collection.list().get("faces")
    steps["delete_example"] = face_collection.delete(faces[len(faces) - 1].get("image_id"))
    steps["delete_all_examples"] = face_collection.delete_all("Colin L Powell")
    subjects = CompreFace(domain, port).init_face_recognition(key).get_subjects()
    steps["delete_subject"] = subjects.delete("George W Bush")
    steps["delete_all_subjects"] = subjects.delete_all()
    steps["list_after"] = subjects.list()
    Path(out).write_text(json.dumps(steps, indent=1))


if __name__ == "__main__":
    main()
