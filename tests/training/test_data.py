"""Data preparation through the service pipeline, the aligned-folder and RecordIO readers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.vision.pipeline import FacePipeline
from tests.conftest import DATA
from training.data import (
    RecordFile,
    RecordHeader,
    augment,
    image_folder,
    pack_record,
    prepare_dataset,
    record_dataset,
    unpack_record,
    write_record_file,
)


def test_prepare_aligns_reports_and_resumes(
    celeba_subset: Path, aligned_subset: Path, pipeline: FacePipeline
) -> None:
    report = json.loads((aligned_subset / "prepare_report.json").read_text())
    assert report["aligned"] + len(report["no_face"]) + len(report["unreadable"]) == 163
    assert report["aligned"] >= 155
    crops = list(aligned_subset.rglob("*.jpg"))
    assert len(crops) == report["aligned"]
    assert Image.open(crops[0]).size == (112, 112)
    # resumable: a second run does nothing new
    again = prepare_dataset(celeba_subset, aligned_subset, pipeline, workers=2, progress=False)
    assert again.aligned == 0 and again.already_done == report["aligned"]


def test_prepared_crops_match_the_service_alignment(
    aligned_subset: Path, pipeline: FacePipeline
) -> None:
    """Training crops are the crops the service embeds: re-detecting finds the template."""
    crop = np.asarray(Image.open(next(aligned_subset.rglob("*.jpg"))).convert("RGB"))
    emb_crop = pipeline.embedder.embed([crop])[0]
    emb_aligned = pipeline.embed_aligned(crop).embedding
    assert float(emb_crop @ emb_aligned) > 0.999


def test_image_folder_labels(aligned_subset: Path) -> None:
    ds = image_folder(aligned_subset)
    assert ds.num_classes == 8 and len(ds) >= 155
    x, y = ds[0]
    assert x.shape == (3, 112, 112) and 0 <= y < 8
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_flip_augmentation_lives_in_one_place() -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    flips = {augment(image, np.random.default_rng(s)).tobytes() for s in range(20)}
    assert flips == {image.tobytes(), image[:, ::-1].tobytes()}
    assert augment(image, np.random.default_rng(0), flip=False) is image


def test_recordio_roundtrip_with_index_header(tmp_path: Path) -> None:
    """A .rec/.idx written to insightface's layout (record 0 = header) reads back without MXNet."""
    people = sorted((DATA / "glint24_aligned").iterdir())[:3]
    items = [
        (label, p) for label, person in enumerate(people) for p in sorted(person.glob("*.jpg"))[:4]
    ]

    def records():  # type: ignore[no-untyped-def]
        yield RecordHeader(2, (float(len(items) + 1), float(len(items) + 1)), 0, 0), b""
        for label, path in items:
            yield RecordHeader(0, float(label), 0, 0), path.read_bytes()

    rec = tmp_path / "train.rec"
    write_record_file(rec, records())
    assert len(RecordFile(rec).keys()) == len(items) + 1
    ds = record_dataset(rec, train=False)
    assert len(ds) == 12 and ds.num_classes == 3
    x, y = ds[5]
    assert x.shape == (3, 112, 112) and y == items[5][0]
    # the payload is the original JPEG, byte for byte
    header, payload = unpack_record(RecordFile(rec).read(6))
    assert payload == items[5][1].read_bytes() and header.label == 1.0
    assert np.asarray(Image.open(io.BytesIO(payload))).shape == (112, 112, 3)


def test_recordio_multi_label_header_and_bad_magic(tmp_path: Path) -> None:
    packed = pack_record(RecordHeader(3, (1.0, 2.0, 3.0), 7, 9), b"img")
    header, payload = unpack_record(packed[8 : 8 + 24 + 12 + 3])
    assert header.label == (1.0, 2.0, 3.0) and header.id == 7 and payload == b"img"
    rec = tmp_path / "bad.rec"
    rec.write_bytes(b"\0" * 32)
    rec.with_suffix(".idx").write_text("0\t0\n")
    with pytest.raises(ValueError, match="magic"):
        RecordFile(rec).read(0)
