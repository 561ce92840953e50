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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

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
    """Aligned faces with integer labels, from any source of (loader, label)."""

    def __init__(
        self,
        loaders: list[Callable[[], np.ndarray]],
        labels: list[int],
        classes: list[str],
        *,
        train: bool = True,
        flip: bool = True,
        seed: int = 0,
        norm: Normalisation = DEFAULT_NORMALISATION,
    ) -> None:
        self.loaders = loaders
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
        image = self.loaders[index]()
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image = augment(image, rng, flip=self.flip)
        return to_tensor(image, self.norm), self.labels[index]

    def image(self, index: int) -> np.ndarray:
        """The crop at ``index`` as stored (no augmentation): for measurements on the data."""
        return self.loaders[index]()


def _loader(path: Path) -> Callable[[], np.ndarray]:
    return lambda: _load_rgb(path)


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
    loaders, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                loaders.append(_loader(path))
                labels.append(label)
    return FaceDataset(loaders, labels, classes, train=train, flip=flip, seed=seed, norm=norm)


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


def pack_record(header: RecordHeader, payload: bytes) -> bytes:
    """One framed RecordIO record (used by tests and by whoever writes .rec files)."""
    labels = header.label if isinstance(header.label, tuple) else None
    flag = len(labels) if labels else 0
    scalar = float(header.label) if isinstance(header.label, (int, float)) else 0.0
    head = IR_HEADER.pack(flag, scalar, header.id, header.id2)
    extra = struct.pack(f"<{flag}f", *labels) if labels else b""
    body = head + extra + payload
    framed = struct.pack("<II", RECORD_MAGIC, len(body)) + body
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


class RecordFile:
    """Random access to an indexed RecordIO file (.rec + .idx) without MXNet."""

    def __init__(self, rec: Path, idx: Path | None = None) -> None:
        self.rec_path = rec
        idx = idx or rec.with_suffix(".idx")
        self.offsets: dict[int, int] = {}
        for line in idx.read_text().splitlines():
            if line.strip():
                key, offset = line.split("\t")
                self.offsets[int(key)] = int(offset)
        self._fh = rec.open("rb")
        self._pid = os.getpid()

    def read(self, key: int) -> bytes:
        """The payload of record ``key``; raises ValueError on a broken frame."""
        if self._pid != os.getpid():  # a DataLoader worker: never share a file offset
            self._fh = self.rec_path.open("rb")
            self._pid = os.getpid()
        self._fh.seek(self.offsets[key])
        magic, length_word = struct.unpack("<II", self._fh.read(8))
        if magic != RECORD_MAGIC:
            raise ValueError(f"record {key} of {self.rec_path} has a bad magic number {magic:#x}")
        cflag, length = length_word >> 29, length_word & ((1 << 29) - 1)
        if cflag != 0:
            raise ValueError(f"record {key} is split across frames (cflag {cflag}); not supported")
        return self._fh.read(length)

    def keys(self) -> list[int]:
        """Record keys in file order."""
        return sorted(self.offsets)

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


def write_record_file(rec: Path, records: Iterator[tuple[RecordHeader, bytes]]) -> None:
    """Write records and their .idx (keys 0, 1, ...) the way insightface's tools do."""
    idx_lines = []
    with rec.open("wb") as fh:
        for key, (header, payload) in enumerate(records):
            idx_lines.append(f"{key}\t{fh.tell()}")
            fh.write(pack_record(header, payload))
    rec.with_suffix(".idx").write_text("\n".join(idx_lines) + "\n")


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
    """
    records = RecordFile(rec)
    keys = records.keys()
    first, _ = unpack_record(records.read(keys[0]))
    if first.flag > 0 and isinstance(first.label, tuple):
        image_keys = list(range(1, int(first.label[0])))
    else:
        image_keys = keys
    labels_raw = []
    for key in image_keys:
        header, _ = unpack_record(records.read(key))
        label = header.label[0] if isinstance(header.label, tuple) else header.label
        labels_raw.append(int(label))
    classes_sorted = sorted(set(labels_raw))
    remap = {c: i for i, c in enumerate(classes_sorted)}

    def loader(key: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            _, payload = unpack_record(records.read(key))
            with Image.open(io.BytesIO(payload)) as img:
                return np.asarray(img.convert("RGB").resize((112, 112)))

        return load

    return FaceDataset(
        [loader(k) for k in image_keys],
        [remap[c] for c in labels_raw],
        [str(c) for c in classes_sorted],
        train=train,
        flip=flip,
        seed=seed,
        norm=norm,
    )
