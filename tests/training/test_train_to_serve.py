"""Issue 26, item 5: the train -> serve loop end to end, with the commands README.md walks a user
through ("Changing the recognizer"): prepare a few CelebA-299 people, train a tiny model for a
few steps, export it (parity-checked) into a registry, calibrate it on a few LFW pairs, move a
gallery of real LFW faces enrolled with SFace to it, identify with it, and roll back.

A model trained for a few steps on a few people cannot recognise a new photo of anyone, so with
the tiny model the test identifies the enrolled photos themselves (the plumbing: the service
follows the gallery to the new model and compares only its vectors); after the rollback SFace
identifies held-back photos of the same people again.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.vision.pipeline import FacePipeline
from tests.conftest import API_KEY, DATA, ROOT, lfw, make_settings, read

PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder",
          "Ariel_Sharon"]  # fmt: skip
ENROLLED = (1, 2)
HELD_BACK = 3
TINY = "tiny-loop"
#: the registry the service needs beside the new model: detector, SFace's second detector, SFace
LINKED = ("retinaface-mnet025", "yunet-2023mar", "sface-2021dec")
TRAIN_PEOPLE, TRAIN_PHOTOS = 4, 6
#: after 3 steps batch norm's running statistics are still mostly their initial values and every
#: face gets the same embedding (cosine 1.0 between any two): the switch rightly refuses such a
#: model (its faces do not find themselves: migration_unverified). After 20 steps any two faces
#: are at most ~0.999 alike, and each finds itself.
TRAIN_STEPS = 20
#: calibration pairs: the first PAIRS same and PAIRS different pairs of LFW View-2's first FOLDS
FOLDS, PAIRS = 2, 5


def registry(tmp_path: Path) -> Path:
    """A models folder of its own: the shipped detector and recognizer linked, never written."""
    models = tmp_path / "models"
    models.mkdir()
    for name in LINKED:
        (models / name).symlink_to(ROOT / "models" / name, target_is_directory=True)
    return models


def training_photos(tmp_path: Path) -> Path:
    """CSV of path,identity: the first photos of the first CelebA-299 people (never LFW)."""
    with (DATA / "celeba299/labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    people = sorted({r["identity"] for r in rows}, key=int)[:TRAIN_PEOPLE]
    out = tmp_path / "celeba.csv"
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "identity"])
        for person in people:
            photos = [r["path"] for r in rows if r["identity"] == person][:TRAIN_PHOTOS]
            writer.writerows([str(DATA / "celeba299" / p), person] for p in photos)
    return out


def calibration_pairs(tmp_path: Path) -> Path:
    """A pairs.txt in LFW's View-2 format with a few pairs of each of its first folds."""
    lines = (DATA / "lfw/pairs.txt").read_text().splitlines()
    per_class = int(lines[0].split()[1])
    chosen = [f"{FOLDS}\t{PAIRS}"]
    for fold in range(FOLDS):
        start = 1 + fold * 2 * per_class
        chosen += lines[start : start + PAIRS]  # same person
        chosen += lines[start + per_class : start + per_class + PAIRS]  # different people
    out = tmp_path / "pairs.txt"
    out.write_text("\n".join(chosen) + "\n")
    return out


def environment(tmp_path: Path, models: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT),
        MARGINFACE_MODELS_DIR=str(models),
        MARGINFACE_DEVICE="cpu",
        MARGINFACE_GALLERY__PATH=str(tmp_path / "gallery"),
        MARGINFACE_PRIVACY__KEEP_IMAGES="true",
        MARGINFACE_PRIVACY__IMAGES_DIR=str(tmp_path / "images"),
    )
    return env


def command(
    tmp_path: Path, models: Path, *args: str, module: str = "service.cli"
) -> subprocess.CompletedProcess[str]:
    """One command as a user types it (``marginface ...`` is ``python -m service.cli ...``)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=environment(tmp_path, models),
        capture_output=True,
        text=True,
        timeout=600,
    )


def succeeds(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The JSON object a successful command printed last."""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def gallery_settings(tmp_path: Path, models: Path) -> Settings:
    """The service as configured before and after the move: SFace, photos kept."""
    return make_settings(
        tmp_path,
        models_dir=models,
        privacy={"keep_images": True, "images_dir": tmp_path / "images"},
    )


def identify(tmp_path: Path, models: Path, photo: int) -> tuple[str, dict[str, str | None]]:
    """(the model a freshly started service answers with, who each person's photo is)."""
    found: dict[str, str | None] = {}
    with TestClient(
        create_app(gallery_settings(tmp_path, models)), headers={"X-API-Key": API_KEY}
    ) as c:
        for person in PEOPLE:
            data = read(lfw(person, photo))
            r = c.post("/v1/identify", files={"image": ("p.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            match = r.json()["faces"][0]["match"]
            found[person] = match["subject_id"] if match else None
        model_id = str(r.json()["model_id"])
    return model_id, found


@pytest.mark.slow
def test_a_freshly_trained_model_serves_a_migrated_gallery_and_rolls_back(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    models = registry(tmp_path)
    aligned, run = tmp_path / "aligned", tmp_path / "run"

    # 1-3: prepare, train a few steps of the smallest backbone on the CPU, export and register
    prepared = succeeds(
        command(tmp_path, models, "prepare", str(training_photos(tmp_path)), str(aligned),
                module="training.train")
    )  # fmt: skip
    assert prepared["aligned"] == TRAIN_PEOPLE * TRAIN_PHOTOS - prepared["no_face"], prepared
    succeeds(
        command(tmp_path, models, f"--data.root={aligned}", f"--output_dir={run}",
                "--model.backbone=mobilefacenet", "--model.width=16",
                "--model.embedding_dim=64", "--batch_size=8", f"--max_steps={TRAIN_STEPS}",
                "--data.workers=0", "--device=cpu", module="training.train")
    )  # fmt: skip
    person = next(p for p in sorted(aligned.iterdir()) if p.is_dir())
    exported = succeeds(
        command(tmp_path, models, "export", str(run), "--name", TINY, "--models-dir",
                str(models), "--parity-images", str(person), module="training.train")
    )  # fmt: skip
    assert float(str(exported["parity_min_cosine"])) >= 0.9999
    tiny_id = str(exported["model_id"])

    # a gallery of real faces, enrolled with SFace, photos kept
    with TestClient(
        create_app(gallery_settings(tmp_path, models), pipeline=pipeline),
        headers={"X-API-Key": API_KEY},
    ) as c:
        for name in PEOPLE:
            files = [("files", (f"{n}.jpg", read(lfw(name, n)), "image/jpeg")) for n in ENROLLED]
            assert c.post("/v1/subjects", json={"id": name, "name": name}).status_code == 201
            r = c.post(f"/v1/subjects/{name}/faces", files=files)
            assert r.status_code == 201, r.text
    faces = len(PEOPLE) * len(ENROLLED)

    # an exported model carries only a placeholder threshold: not calibrated, so refused
    refused = command(tmp_path, models, "gallery", "migrate-model", "--to", TINY, "--dry-run",
                      "--json")  # fmt: skip
    assert refused.returncode == 2, refused.stdout
    assert json.loads(refused.stdout)["error"]["code"] == "model_not_calibrated"

    # 4: calibrate on a few LFW pairs (LFW is for evaluation only, never training)
    calibrated = succeeds(
        command(tmp_path, models, "calibrate", "--model", TINY, "--images",
                str(DATA / "lfw/images"), "--pairs", str(calibration_pairs(tmp_path)),
                "--all-cross-identity", "--json")
    )  # fmt: skip
    calibration = calibrated["calibration"]
    assert isinstance(calibration, dict) and calibration["pairs"] == FOLDS * 2 * PAIRS
    manifest = json.loads((models / TINY / "manifest.json").read_text())
    assert manifest["calibration"]["thresholds_by_far"]

    # 5: the dry run counts, the move re-embeds every face and switches
    dry = succeeds(command(tmp_path, models, "gallery", "migrate-model", "--to", TINY,
                           "--dry-run", "--json"))  # fmt: skip
    assert dry["to_embed"] == faces and dry["cannot_migrate"] == 0, dry
    moved = succeeds(command(tmp_path, models, "gallery", "migrate-model", "--to", TINY,
                             "--json"))  # fmt: skip
    assert moved["switched"] == faces and moved["failed"] == 0, moved

    # 6: a service configured for SFace follows the gallery to the tiny model; each enrolled
    # photo is its own person (the same photo, the same model: cosine 1)
    model_id, found = identify(tmp_path, models, ENROLLED[0])
    assert model_id == tiny_id
    assert found == {p: p for p in PEOPLE}

    # 7: roll back: nothing re-embedded, SFace identifies held-back photos again
    back = succeeds(command(tmp_path, models, "gallery", "migrate-model", "--rollback",
                            "--json"))  # fmt: skip
    assert back["switched"] == faces and back["embedded"] == 0, back
    model_id, found = identify(tmp_path, models, HELD_BACK)
    assert model_id == pipeline.model_id
    assert found == {p: p for p in PEOPLE}
    purged = succeeds(command(tmp_path, models, "gallery", "migrate-model", "--purge", "--json"))
    assert purged["purged"] == faces
