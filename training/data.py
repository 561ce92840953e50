"""Training data: preparation from raw photos, aligned-folder and RecordIO readers, augmentation.

Preparation runs every photo through the service's own detector and aligner (``FacePipeline``),
so a model is trained on exactly the crops it will be served.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import struct
import typing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from service.errors import MarginFaceError
from service.vision.image import decode_image
from service.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm"}
# The normalisation our own backbones are trained with and their manifests declare:
# RGB, (x - 127.5) / 127.5.
MEAN, STD = 127.5, 127.5


@dataclass(frozen=True)
class Normalisation:
    """How a crop becomes the network's input: colour order, then (x - mean) / std per channel.

    Our backbones use the default; a model imported from the registry (``model.init``) keeps
    the one its manifest declares, so fine-tuning and serving feed it alike."""

    mean: tuple[float, float, float] = (MEAN, MEAN, MEAN)
    std: tuple[float, float, float] = (STD, STD, STD)
    color_order: str = "RGB"

    def apply(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB to (3, H, W) float."""
        x = image.astype(np.float32)
        if self.color_order == "BGR":
            x = x[..., ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray((x - mean) / std)).permute(2, 0, 1)


DEFAULT_NORMALISATION = Normalisation()


# ---------------------------------------------------------------------------------------------
# Preparation


@dataclass
class PrepareReport:
    """What preparation did, image by image (also written as JSON beside the output)."""

    aligned: int = 0
    already_done: int = 0
    no_face: list[str] = field(default_factory=list)
    multiple_faces: list[str] = field(default_factory=list)  # kept the main face, logged here
    unreadable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "aligned": self.aligned,
            "already_done": self.already_done,
            "no_face": self.no_face,
            "multiple_faces": self.multiple_faces,
            "unreadable": self.unreadable,
        }


def list_sources(source: Path) -> list[tuple[Path, str]]:
    """(image path, identity) from a folder per identity, or a CSV with path,identity columns."""
    if source.is_file() and source.suffix.lower() == ".csv":
        with source.open() as fh:
            rows = list(csv.DictReader(fh))
        if not rows or not {"path", "identity"} <= set(rows[0]):
            raise ValueError(f"{source} needs the columns path,identity")
        return [(source.parent / r["path"], str(r["identity"])) for r in rows]
    if source.is_dir():
        return [
            (p, d.name)
            for d in sorted(x for x in source.iterdir() if x.is_dir())
            for p in sorted(d.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES
        ]
    raise ValueError(f"{source} is neither a folder per identity nor a .csv of path,identity")


def _main_face_index(
    boxes: list[tuple[float, float, float, float]], width: int, height: int
) -> int:
    """The labelled person in a crowd: largest face, ties broken towards the centre."""
    centre = np.array([width / 2, height / 2])
    diag = float(np.hypot(width, height))

    def key(i: int) -> float:
        x1, y1, x2, y2 = boxes[i]
        area = (x2 - x1) * (y2 - y1) / (width * height)
        offset = float(np.linalg.norm(np.array([(x1 + x2) / 2, (y1 + y2) / 2]) - centre)) / diag
        return area - 0.5 * offset * area

    return max(range(len(boxes)), key=key)


def prepare_dataset(
    source: Path, output: Path, pipeline: FacePipeline, *, workers: int = 2, progress: bool = True
) -> PrepareReport:
    """Detect and align every photo into ``output/<identity>/<stem>.jpg`` (112x112).

    Resumable: photos whose crop exists are skipped. Photos without a face, unreadable ones, and
    photos with several faces (the main face is kept) are listed in ``output/prepare_report.json``.
    """
    items = list_sources(source)
    output.mkdir(parents=True, exist_ok=True)
    report = PrepareReport()

    def target(path: Path, identity: str) -> Path:
        return output / identity / f"{path.stem}.jpg"

    def work(item: tuple[Path, str]) -> tuple[str, Path]:
        path, identity = item
        out = target(path, identity)
        if out.exists():
            return "done", path
        try:
            image = decode_image(path.read_bytes(), min_side=1)
        except (OSError, MarginFaceError):
            return "unreadable", path
        detections = pipeline.detect(image)
        if not detections:
            return "no_face", path
        main = detections[
            _main_face_index([d.box for d in detections], image.shape[1], image.shape[0])
        ]
        crop = pipeline.align(image, main.landmarks)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".part")
        Image.fromarray(crop).save(tmp, format="JPEG", quality=95)
        tmp.replace(out)
        return ("multiple" if len(detections) > 1 else "aligned"), path

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(work, items)
        for status, path in tqdm(results, total=len(items), desc="aligning", disable=not progress):
            if status == "done":
                report.already_done += 1
            elif status == "unreadable":
                report.unreadable.append(str(path))
            elif status == "no_face":
                report.no_face.append(str(path))
            else:
                report.aligned += 1
                if status == "multiple":
                    report.multiple_faces.append(str(path))
    (output / "prepare_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report


# ---------------------------------------------------------------------------------------------
# Readers


def augment(image: np.ndarray, rng: np.random.Generator, *, flip: bool = True) -> np.ndarray:
    """The one place training augmentation happens: a horizontal flip half of the time."""
    if flip and rng.random() < 0.5:
        return np.ascontiguousarray(image[:, ::-1])
    return image


def to_tensor(image: np.ndarray, norm: Normalisation = DEFAULT_NORMALISATION) -> torch.Tensor:
    """(H, W, 3) uint8 RGB to (3, H, W) float, normalised as the exported manifest declares."""
    return norm.apply(image)


class FaceDataset(Dataset[tuple[torch.Tensor, int]]):
    """Aligned faces with integer labels: ``load(i)`` gives image i (one function, not a
    closure per image: at 42M faces those alone would take gigabytes per process)."""

    def __init__(
        self,
        load: Callable[[int], np.ndarray],
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str] | np.ndarray,
        *,
        train: bool = True,
        flip: bool = True,
        seed: int = 0,
        norm: Normalisation = DEFAULT_NORMALISATION,
    ) -> None:
        self.load = load
        self.labels = labels
        self.classes = classes
        self.train = train
        self.flip = flip
        self.seed = seed
        self.norm = norm
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        """Number of identities."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.load(index)
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image = augment(image, rng, flip=self.flip)
        return to_tensor(image, self.norm), int(self.labels[index])

    def image(self, index: int) -> np.ndarray:
        """The crop at ``index`` as stored (no augmentation): for measurements on the data."""
        return self.load(index)


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((112, 112)))


def image_folder(
    root: Path,
    *,
    train: bool = True,
    flip: bool = True,
    seed: int = 0,
    max_identities: int = 0,
    norm: Normalisation = DEFAULT_NORMALISATION,
) -> FaceDataset:
    """An aligned folder: ``root/<identity>/*.jpg``; labels in sorted identity order (only the
    first ``max_identities`` identities when set: the rest stay unseen, for a split by
    identity)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if max_identities:
        classes = classes[:max_identities]
    if not classes:
        raise ValueError(f"no identity folders under {root}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(label)
    return FaceDataset(
        lambda i: _load_rgb(paths[i]),
        labels,
        classes,
        train=train,
        flip=flip,
        seed=seed,
        norm=norm,
    )


# insightface / MXNet RecordIO: records framed by a magic number; each payload starts with an
# IRHeader (flag: uint32, label: float32, id: uint64, id2: uint64), then `flag` extra float32
# labels when flag > 0, then the encoded image.
RECORD_MAGIC = 0xCED7230A
IR_HEADER = struct.Struct("<IfQQ")


@dataclass(frozen=True)
class RecordHeader:
    """The IRHeader of one record."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def _frame(cflag: int, part: bytes) -> bytes:
    return struct.pack("<II", RECORD_MAGIC, (cflag << 29) | len(part)) + part


def pack_record(header: RecordHeader, payload: bytes) -> bytes:
    """One record framed as MXNet's (dmlc-core's) writer frames it: where the magic number
    sits at a 4-byte-aligned offset of the body, the record is split into parts there (the
    magic dropped; cflag 1 first, 2 between, 3 last), so a reader never mistakes it for a
    frame start. Used by tests and by whoever writes .rec files."""
    labels = header.label if isinstance(header.label, tuple) else None
    flag = len(labels) if labels else 0
    scalar = float(header.label) if isinstance(header.label, (int, float)) else 0.0
    head = IR_HEADER.pack(flag, scalar, header.id, header.id2)
    extra = struct.pack(f"<{flag}f", *labels) if labels else b""
    body = head + extra + payload
    magic = struct.pack("<I", RECORD_MAGIC)
    framed, start = b"", 0
    for i in range(0, len(body) // 4 * 4, 4):
        if body[i : i + 4] == magic:
            framed += _frame(1 if start == 0 else 2, body[start:i])
            start = i + 4
    framed += _frame(3 if start else 0, body[start:])
    return framed + b"\0" * (-len(body) % 4)


def unpack_record(data: bytes) -> tuple[RecordHeader, bytes]:
    """Split a record payload into its header and image bytes."""
    flag, label, rid, rid2 = IR_HEADER.unpack_from(data, 0)
    offset = IR_HEADER.size
    labels: float | tuple[float, ...] = label
    if flag > 0:
        labels = struct.unpack_from(f"<{flag}f", data, offset)
        offset += 4 * flag
    return RecordHeader(flag, labels, rid, rid2), data[offset:]


INDEX_DTYPE = np.dtype([("key", "<i8"), ("offset", "<i8")])


def _cached_array(path: Path, source: Path, build: Callable[[], np.ndarray]) -> np.ndarray:
    """``build()`` saved once as ``path`` (.npy) and memory-mapped, so every rank and loader
    worker shares one copy in the page cache instead of parsing its own. Rebuilt when older
    than ``source``; kept in memory (with a warning) where the folder is read-only."""
    if path.is_file() and path.stat().st_mtime >= source.stat().st_mtime:
        return np.load(path, mmap_mode="r")
    array = build()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        with tmp.open("wb") as fh:
            np.save(fh, array)
        tmp.replace(path)  # atomic: ranks building at once each write a whole file
    except OSError as exc:
        log.warning("cannot cache %s (%s): every process keeps its own copy in memory", path, exc)
        return array
    return np.load(path, mmap_mode="r")


def _parse_index(idx: Path) -> np.ndarray:
    """The .idx text (key TAB offset per line) as an array sorted by key."""
    table = np.loadtxt(idx, dtype=np.int64, delimiter="\t", ndmin=2)
    index = np.empty(len(table), dtype=INDEX_DTYPE)
    index["key"], index["offset"] = table[:, 0], table[:, 1]
    return np.sort(index, order="key")


class RecordFile:
    """Random access to an indexed RecordIO file (.rec + .idx) without MXNet.

    The index is parsed once into ``<name>.idx.npy`` beside the .idx and memory-mapped (16
    bytes per record, shared by all processes on a machine); records MXNet's writer split
    (continuation flags) are joined back."""

    def __init__(self, rec: Path, idx: Path | None = None) -> None:
        self.rec_path = rec
        self.idx_path = idx or rec.with_suffix(".idx")
        self.index = _cached_array(
            self.idx_path.with_name(self.idx_path.name + ".npy"),
            self.idx_path,
            lambda: _parse_index(self.idx_path),
        )
        self._fh: BinaryIO | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, object]:
        # a worker started by spawn maps the index itself instead of receiving a pickled copy
        return {"rec_path": self.rec_path, "idx_path": self.idx_path}

    def __setstate__(self, state: dict[str, Path]) -> None:
        self.__init__(state["rec_path"], state["idx_path"])  # type: ignore[misc]

    def offset(self, key: int) -> int:
        """Byte offset of record ``key``; raises KeyError when the index lacks it."""
        keys = self.index["key"]
        i = int(np.searchsorted(keys, key))
        if i >= len(keys) or int(keys[i]) != key:
            raise KeyError(f"record {key} is not in {self.idx_path}")
        return int(self.index["offset"][i])

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (split parts joined); raises ValueError on a broken
        frame."""
        if self._fh is None or self._pid != os.getpid():  # a worker: never share a file offset
            self._fh = self.rec_path.open("rb")
            self._pid = os.getpid()
        fh = self._fh
        fh.seek(self.offset(key))
        parts: list[bytes] = []
        while True:
            frame = fh.read(8)
            if len(frame) < 8:
                raise ValueError(f"record {key} of {self.rec_path} is truncated")
            magic, length_word = struct.unpack("<II", frame)
            if magic != RECORD_MAGIC:
                raise ValueError(
                    f"record {key} of {self.rec_path} has a bad magic number {magic:#x}"
                )
            cflag, length = length_word >> 29, length_word & ((1 << 29) - 1)
            if (cflag in (0, 1)) != (not parts):
                raise ValueError(
                    f"record {key} of {self.rec_path}: continuation flag {cflag} out of order"
                )
            parts.append(fh.read(length))
            if cflag in (0, 3):
                break
            # middle parts are whole words; the writer dropped a magic number between parts
        return struct.pack("<I", RECORD_MAGIC).join(parts)

    def keys(self) -> np.ndarray:
        """Record keys in ascending order."""
        return self.index["key"]

    def close(self) -> None:
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def write_record_file(rec: Path, records: Iterator[tuple[RecordHeader, bytes]]) -> None:
    """Write records and their .idx (keys 0, 1, ...) the way insightface's tools do."""
    idx_lines = []
    with rec.open("wb") as fh:
        for key, (header, payload) in enumerate(records):
            idx_lines.append(f"{key}\t{fh.tell()}")
            fh.write(pack_record(header, payload))
    rec.with_suffix(".idx").write_text("\n".join(idx_lines) + "\n")


def _record_labels(records: RecordFile, image_keys: np.ndarray) -> np.ndarray:
    """Each image record's label, read from its header (once per file: then cached)."""
    labels = np.empty(len(image_keys), dtype=np.int64)
    for i, key in enumerate(tqdm(image_keys, desc="reading labels", disable=len(image_keys) < 1e5)):
        header, _ = unpack_record(records.read(int(key)))
        label = header.label[0] if isinstance(header.label, tuple) else header.label
        labels[i] = int(label)
    return labels


def record_dataset(
    rec: Path,
    *,
    train: bool = True,
    flip: bool = True,
    seed: int = 0,
    norm: Normalisation = DEFAULT_NORMALISATION,
) -> FaceDataset:
    """A dataset over an insightface .rec (MS1MV2, Glint360K, WebFace layout).

    Record 0 with flag > 0 is the index header: its labels give the range of image records.
    Labels are read once into ``<name>.labels.npy`` (dense class ids) and memory-mapped, as the
    index is: nothing per record is held in each process's own memory.
    """
    records = RecordFile(rec)
    keys = records.keys()
    first, _ = unpack_record(records.read(int(keys[0])))
    if first.flag > 0 and isinstance(first.label, tuple):
        image_keys = np.arange(1, int(first.label[0]), dtype=np.int64)
    else:
        image_keys = np.asarray(keys, dtype=np.int64)

    def dense_labels() -> np.ndarray:
        raw = _record_labels(records, image_keys)
        classes = np.unique(raw)
        return np.stack([np.searchsorted(classes, raw), raw])  # (2, N): dense id, raw label

    table = _cached_array(rec.with_name(rec.name + ".labels.npy"), rec, dense_labels)
    labels = table[0]
    num_classes = int(labels.max()) + 1 if len(labels) else 0

    def load(i: int) -> np.ndarray:
        _, payload = unpack_record(records.read(int(image_keys[i])))
        with Image.open(io.BytesIO(payload)) as img:
            return np.asarray(img.convert("RGB").resize((112, 112)))

    return FaceDataset(
        load,
        labels,
        _ClassNames(num_classes),
        train=train,
        flip=flip,
        seed=seed,
        norm=norm,
    )


class _ClassNames(Sequence[str]):
    """Class names of a RecordIO set: its dense ids, without a list of millions of strings."""

    def __init__(self, count: int) -> None:
        self.size = count

    def __len__(self) -> int:
        return self.size

    @typing.overload
    def __getitem__(self, i: int) -> str: ...
    @typing.overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return [str(j) for j in range(self.size)[i]]
        if not -self.size <= i < self.size:
            raise IndexError(i)
        return str(range(self.size)[i])
