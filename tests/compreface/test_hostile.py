# ruff: noqa: E501 - a table of cases reads best one per line
"""The hostile-input corpus (tests/reliability/corpus.py) against the CompreFace routes of a real
server: every broken image through every image route, multipart and base64, plus CompreFace's
own inputs (image ids, embeddings, JSON bodies, query options). Never a 5xx or a hang, every
error in CompreFace's body, and the gallery unchanged by the failures."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import free_port
from tests.conftest import API_KEY
from tests.reliability.corpus import FACE, fifty_faces, image_cases
from tests.test_server import server

HEADERS = {"x-api-key": API_KEY}
R = "/api/v1/recognition"
ImageRoute = tuple[str, str, dict[str, str]]


def image_routes(example: str) -> list[ImageRoute]:
    """(label, path, query) of every route that takes one image in the field ``file``."""
    return [
        ("recognize", f"{R}/recognize", {}),
        ("detect", "/api/v1/detection/detect", {}),
        ("add", f"{R}/faces", {"subject": "hostile"}),  # made unique per case below
        ("verify_example", f"{R}/faces/{example}/verify", {}),
    ]


def cases(example: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, method, path, httpx keyword arguments)."""
    face = FACE.read_bytes()
    face64 = base64.b64encode(face).decode()
    out: list[tuple[str, str, str, dict[str, Any]]] = []
    for name, (body, _) in image_cases().items():
        for label, path, query in image_routes(example):
            query = {k: f"{v}-{name}" for k, v in query.items()}
            files = {"file": ("x.jpg", body, "image/jpeg")}
            out.append((f"{label}_{name}", "POST", path, {"params": query, "files": files}))
            b64 = {"file": base64.b64encode(body).decode()}
            out.append((f"{label}_{name}_b64", "POST", path, {"params": query, "json": b64}))
        pair = {"source_image": ("s.jpg", body, "image/jpeg"), "target_image": ("t.jpg", face, "image/jpeg")}  # fmt: skip
        out.append((f"verification_{name}", "POST", "/api/v1/verification/verify", {"files": pair}))
    detect = "/api/v1/detection/detect"
    photo = {"file": ("p.jpg", face, "image/jpeg")}
    for label, value in {"neg": "-1", "text": "x", "nan": "nan", "big": "1e9"}.items():
        for param in ("limit", "det_prob_threshold", "prediction_count"):
            path = f"{R}/recognize" if param == "prediction_count" else detect
            out.append(
                (f"{param}_{label}", "POST", path, {"params": {param: value}, "files": photo})
            )
    for label, plugins in {
        "unknown": "eyes",
        "long": "x," * 500,
        "commas": ",,,",
        "age": "age",
    }.items():
        out.append(
            (
                f"plugins_{label}",
                "POST",
                detect,
                {"params": {"face_plugins": plugins}, "files": photo},
            )
        )
    bad_ids = ["nope", "0" * 5000, "00000000-0000-0000-0000-000000000000",
               "ffffffff-ffff-ffff-ffff-ffffffffffff", "%00", "😀"]  # fmt: skip
    for i, bad in enumerate(bad_ids):
        out += [
            (f"delete_id_{i}", "DELETE", f"{R}/faces/{bad}", {}),
            (f"img_id_{i}", "GET", f"{R}/faces/{bad}/img", {}),
            (f"static_id_{i}", "GET", f"/api/v1/static/{API_KEY}/images/{bad}", {}),
            (f"verify_id_{i}", "POST", f"{R}/faces/{bad}/verify", {"files": photo}),
            (f"emb_verify_id_{i}", "POST", f"{R}/embeddings/faces/{bad}/verify", {"json": {"embeddings": [[0.1] * 128]}}),
        ]  # fmt: skip
    embeddings: dict[str, Any] = {
        "empty": [],
        "empty_row": [[]],
        "short": [[0.1] * 5],
        "long": [[0.1] * 100_000],
        "zero": [[0.0] * 128],
        "strings": [["a"] * 128],
        "nested": [[[0.1]] * 128],
        "huge_value": [[1e308] * 128],
        "many": [[0.1] * 128] * 1000,
    }
    for label, value in embeddings.items():
        out += [
            (f"emb_recognize_{label}", "POST", f"{R}/embeddings/recognize", {"json": {"embeddings": value}}),
            (f"emb_verify_{label}", "POST", f"{R}/embeddings/faces/{example}/verify", {"json": {"embeddings": value}}),
            (f"emb_pair_{label}", "POST", "/api/v1/verification/embeddings/verify", {"json": {"source": (value or [[]])[0], "targets": value}}),
        ]  # fmt: skip
    out += [
        ("nan_embedding", "POST", f"{R}/embeddings/recognize", {"content": b'{"embeddings": [[NaN' + b", 0.1" * 127 + b"]]}", "headers": {"content-type": "application/json"}}),
        ("subject_json_array", "POST", f"{R}/subjects", {"json": ["a"]}),
        ("subject_empty", "POST", f"{R}/subjects", {"json": {"subject": ""}}),
        ("subject_long", "POST", f"{R}/subjects", {"json": {"subject": "s" * 100_000}}),
        ("subject_surrogate", "POST", f"{R}/subjects", {"content": b'{"subject": "\\ud800"}', "headers": {"content-type": "application/json"}}),
        ("subject_malformed", "POST", f"{R}/subjects", {"content": b'{"subject": ', "headers": {"content-type": "application/json"}}),
        ("rename_missing", "PUT", f"{R}/subjects/nobody", {"json": {"subject": "x"}}),
        ("delete_missing_subject", "DELETE", f"{R}/subjects/nobody", {}),
        ("list_missing_subject", "GET", f"{R}/faces", {"params": {"subject": "nobody"}}),
        ("page_negative", "GET", f"{R}/faces", {"params": {"page": "-1"}}),
        ("page_huge", "GET", f"{R}/faces", {"params": {"page": str(2**40)}}),
        ("size_zero", "GET", f"{R}/faces", {"params": {"size": "0"}}),
        ("delete_many_not_list", "POST", f"{R}/faces/delete", {"json": {"ids": []}}),
        ("delete_many_numbers", "POST", f"{R}/faces/delete", {"json": [1, 2]}),
        ("text_body", "POST", detect, {"content": b"hello", "headers": {"content-type": "text/plain"}}),
        ("no_body", "POST", detect, {}),
        ("json_no_file", "POST", detect, {"json": {"image": face64}}),
        ("json_file_number", "POST", detect, {"json": {"file": 5}}),
        ("json_array_body", "POST", detect, {"json": [face64]}),
        ("form_text_not_b64", "POST", detect, {"data": {"file": "not base64 !!"}}),
        ("wrong_field", "POST", detect, {"files": {"image": ("p.jpg", face, "image/jpeg")}}),
        ("too_many_files", "POST", detect, {"files": [("file", ("p.jpg", face, "image/jpeg"))] * 20}),
        ("verification_one_image", "POST", "/api/v1/verification/verify", {"files": {"source_image": ("s.jpg", face, "image/jpeg")}}),
        ("oversized", "POST", detect, {"files": {"file": ("big.jpg", b"\xff\xd8" + b"\0" * (70 * 1024 * 1024), "image/jpeg")}}),
        ("oversized_b64", "POST", detect, {"json": {"file": "A" * (70 * 1024 * 1024)}}),
        ("fifty_faces", "POST", detect, {"files": {"file": ("f.jpg", fifty_faces(), "image/jpeg")}}),
        ("static_bad_key", "GET", "/api/v1/static/wrong/images/00000000-0000-0000-0000-000000000001", {}),
    ]  # fmt: skip
    return out


def snapshot(c: httpx.Client) -> tuple[object, ...]:
    """The collection as CompreFace lists it, less what valid images of the corpus added (an
    example with its subject): a failed add must leave no subject behind."""
    faces = c.get(f"{R}/faces", params={"size": 1000}).json()["faces"]
    added = {f["subject"] for f in faces if f["subject"].startswith("hostile-")}
    subjects = sorted(set(c.get(f"{R}/subjects").json()["subjects"]) - added)
    return subjects, sorted(f["image_id"] for f in faces if f["subject"] not in added)


@pytest.mark.slow
def test_hostile_corpus_against_the_compreface_routes(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "MARGINFACE_PRIVACY__KEEP_IMAGES": "true",
        "MARGINFACE_PRIVACY__IMAGES_DIR": str(tmp_path / "images"),
    }
    with (
        server(tmp_path / "gallery", port, env),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=120) as c,
    ):
        r = c.post(f"{R}/faces", params={"subject": "victim"}, files={"file": ("a.jpg", FACE.read_bytes(), "image/jpeg")})  # fmt: skip
        assert r.status_code == 201
        example = r.json()["image_id"]
        before = snapshot(c)
        failures = []
        all_cases = cases(example)
        assert len(all_cases) > 200
        for name, method, path, kwargs in all_cases:
            try:
                r = c.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # the server may close on an oversized body
                if not name.startswith("oversized"):
                    failures.append((name, f"transport error {exc!r}"))
                continue
            if r.status_code >= 500:
                failures.append((name, r.status_code, r.text[:200]))
            elif r.status_code >= 400:
                body = r.json()
                if set(body) != {"message", "code"} or not isinstance(body["code"], int):
                    failures.append((name, r.status_code, "not CompreFace's body", r.text[:200]))
        assert not failures, failures
        assert c.get("/healthz").status_code == 200
        assert snapshot(c) == before
