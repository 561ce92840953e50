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


def _mxnet_write_record(payload: bytes) -> bytes:
    """dmlc-core's RecordIOWriter::WriteRecord, transcribed: wherever the magic number sits at a
    4-byte-aligned offset of the payload, the record is split there (the magic dropped, cflag 1
    for the first part, 2 in between, 3 for the last) and the reader puts the magic back."""
    import struct

    from training.data import RECORD_MAGIC

    magic = struct.pack("<I", RECORD_MAGIC)
    out, start = b"", 0
    for i in range(0, len(payload) // 4 * 4, 4):
        if payload[i : i + 4] == magic:
            flag = 1 if start == 0 else 2
            out += magic + struct.pack("<I", (flag << 29) | (i - start)) + payload[start:i]
            start = i + 4
    flag = 3 if start else 0
    out += magic + struct.pack("<I", (flag << 29) | (len(payload) - start)) + payload[start:]
    return out + b"\0" * (-len(payload) % 4)


def test_recordio_reads_records_mxnet_split(tmp_path: Path) -> None:
    """A payload holding the magic number at aligned offsets (here the IRHeader's id and id2)
    is written by MXNet as a split record; on main a loader worker crashed on it."""
    from training.data import IR_HEADER, RECORD_MAGIC

    jpeg = sorted((DATA / "glint24_aligned").iterdir())[0].joinpath("1.jpg").read_bytes()
    header = RecordHeader(2, (3.0, 3.0), 0, 0)
    index_payload = IR_HEADER.pack(2, 0.0, 0, 0) + np.array([3.0, 3.0], "<f4").tobytes()
    split = IR_HEADER.pack(0, 5.0, RECORD_MAGIC, RECORD_MAGIC) + jpeg  # magic at 8 and 16
    plain = IR_HEADER.pack(0, 7.0, 1, 2) + jpeg
    frames = [_mxnet_write_record(p) for p in (index_payload, split, plain)]
    assert (int.from_bytes(frames[1][4:8], "little") >> 29) == 1  # really split: cflag 1, 2, 3
    rec = tmp_path / "split.rec"
    rec.write_bytes(b"".join(frames))
    offsets = np.cumsum([0] + [len(f) for f in frames[:-1]])
    rec.with_suffix(".idx").write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets)))
    records = RecordFile(rec)
    got_header, got_image = unpack_record(records.read(1))
    assert got_image == jpeg and got_header.id == RECORD_MAGIC == got_header.id2
    assert got_header.label == 5.0
    ds = record_dataset(rec, train=False)
    assert len(ds) == 2 and ds.num_classes == 2
    assert ds[0][0].shape == (3, 112, 112) and [ds[i][1] for i in range(2)] == [0, 1]
    # our writer frames records as MXNet's does, split included
    assert pack_record(header, b"") == _mxnet_write_record(index_payload)
    assert pack_record(RecordHeader(0, 5.0, RECORD_MAGIC, RECORD_MAGIC), jpeg) == frames[1]


def test_recordio_index_is_memory_mapped_not_parsed_per_rank(tmp_path: Path) -> None:
    """Every rank (and loader worker) used to parse the whole .idx into a dict and read every
    record's header (407 MiB per million records per process). The index and the labels are
    parsed once into .npy files beside the .rec and memory-mapped: the page cache is shared."""
    people = sorted((DATA / "glint24_aligned").iterdir())[:2]
    items = [
        (label, p) for label, person in enumerate(people) for p in sorted(person.glob("*.jpg"))[:3]
    ]

    def records():  # type: ignore[no-untyped-def]
        for label, path in items:
            yield RecordHeader(0, float(label), 0, 0), path.read_bytes()

    rec = tmp_path / "train.rec"
    write_record_file(rec, records())
    ds = record_dataset(rec, train=False)
    index = RecordFile(rec).index
    assert isinstance(index, np.memmap) and len(index) == 6
    assert [ds[i][1] for i in range(6)] == [label for label, _ in items]
    again = record_dataset(rec, train=False)  # second rank: maps the same files
    assert isinstance(again.labels, np.memmap)
