"""A model calibrated on a small pairs set and the server's default identify FAR.

`marginface calibrate` on 200 pairs gives FARs down to 1e-2 only; the server's default identify
operating point is 1e-4. A plain identify (no far= sent) once answered 422 "far=0.0001 is below the
lowest FAR the calibration supports", blaming the client for a server setting."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import API_KEY, ROOT, lfw, make_settings, read

HEADERS = {"X-API-Key": API_KEY}


def small_calibration_models(tmp_path: Path) -> Path:
    """A registry whose recognizer's calibration stops at FAR 1e-2 (links to the real weights)."""
    models = tmp_path / "models"
    models.mkdir()
    for entry in (ROOT / "models").iterdir():
        if entry.name != "sface-2021dec" and not entry.name.startswith("."):
            (models / entry.name).symlink_to(entry)
    own = models / "sface-2021dec"
    own.mkdir()
    for f in (ROOT / "models" / "sface-2021dec").iterdir():
        if f.name != "manifest.json":
            (own / f.name).symlink_to(f)
    manifest = json.loads((ROOT / "models" / "sface-2021dec" / "manifest.json").read_text())
    table = manifest["calibration"]["thresholds_by_far"]
    manifest["calibration"].update(
        thresholds_by_far={k: table[k] for k in ("1e-01", "1e-02")},
        pairs=200,
        impostor_pairs=100,
        dataset="200 pairs of a small set",
    )
    (own / "manifest.json").write_text(json.dumps(manifest))
    return models


def test_plain_identify_never_blames_the_client_for_the_server_default_far(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, models_dir=small_calibration_models(tmp_path))
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as client:
        photo = read(lfw("Colin_Powell", 1))
        r = client.post("/v1/identify", files={"image": ("p.jpg", photo, "image/jpeg")},
                        headers=HEADERS)  # fmt: skip
        assert r.status_code == 200, r.text
        source = r.json()["threshold"]["source"]
        # the answer says which operating point was used instead of the configured one
        assert "1e-04" in source.replace("0.0001", "1e-04") and "0.01" in source, source
        # a client that asks for that FAR itself is still told it is not supported
        r = client.post("/v1/identify", files={"image": ("p.jpg", photo, "image/jpeg")},
                        data={"far": "1e-4"}, headers=HEADERS)  # fmt: skip
        assert r.status_code == 422 and "far=0.0001" in r.json()["error"]["message"]
    # and the operator hears of it when the server starts, not first from a client
    assert any("MARGINFACE_IDENTIFY_FAR" in rec.getMessage() for rec in caplog.records)
