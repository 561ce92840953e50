"""Static int8 quantization of a recognizer, from calibration faces the service aligned itself.

A quantized recognizer is a model of its own (its embeddings are not comparable with the fp32
ones to the precision a gallery needs, so it has its own model id, manifest and calibration).
It is derived at fetch time (``service.models.DerivedSource``): the base model's weights,
QDQ format, int8 per-channel weights and uint8 activations, activation ranges from MinMax over
the calibration faces (CelebA-299 photos, never LFW), each detected and aligned by the base
pipeline exactly as the service does.

The bytes are not reproducible across machines (the activation ranges come from float
arithmetic whose last bits depend on the CPU's kernels: AVX2 and AVX-512 builds differ, thread
counts do not), so what is pinned is what can be: the base weights (its own manifest), the
recipe (``DerivedSource``), the calibration photos (``calibration_sha256``); the product is
verified by behaviour: the embeddings of reference faces must lie within ``min_cosine`` of those
the reference build gave them (``reference.json`` beside the manifest).
"""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import ModelError
from service.models import DerivedSource, Manifest


def calibration_photos(labels_csv: Path, count: int) -> list[Path]:
    """The candidate calibration photos: every k-th row of ``labels_csv`` (path,identity), spread
    over the identities; the first ``count`` with a detected face are used."""
    rows = list(csv.DictReader(labels_csv.open()))
    step = max(1, len(rows) // max(count, 1))
    return [labels_csv.parent / row["path"] for row in rows[::step]]


def files_sha256(paths: list[Path], root: Path) -> str:
    """One sha256 over the files' paths (relative to ``root``) and bytes, in order: pins a set
    of inputs whatever folder it sits in."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def calibration_faces(
    labels_csv: Path, count: int, detector_dir: Path, manifest: Manifest
) -> list[np.ndarray]:
    """``count`` aligned crops of the photos listed in ``labels_csv`` (path,identity), spread
    over the identities (every k-th row), each photo's chosen face as enrollment chooses it."""
    from service.models import resolve_model
    from service.vision.alignment import align_face
    from service.vision.detection import create_detector
    from service.vision.image import decode_image

    det_manifest, det_weights = resolve_model(detector_dir.parent, detector_dir.name)
    detector = create_detector(det_manifest, det_weights, device="cpu", intra_op_threads=1)
    template = np.asarray(manifest.alignment_template, dtype=np.float64)
    size = (manifest.input.width or 112, manifest.input.height or 112)
    crops: list[np.ndarray] = []
    for photo in calibration_photos(labels_csv, count):
        if len(crops) >= count:
            break
        image = decode_image(photo.read_bytes())
        found = detector.detect(image)
        if not found:
            continue
        face = max(found, key=lambda d: d.area)
        crops.append(align_face(image, face.landmarks, template=template, size=size))
    return crops


def quantize_recognizer(
    base: Manifest,
    base_weights: Path,
    crops: list[np.ndarray],
    target: Path,
    *,
    reduce_range: bool = True,
    fp32_nodes: Sequence[str] = (),
    calibration_cache: Path | None = None,
) -> None:
    """Write the int8 QDQ graph of ``base`` to ``target``, calibrated on ``crops``.

    ``fp32_nodes`` (node names of the base graph) stay in float: the layers whose quantization
    costs the most accuracy (``bench/int8_sensitivity.py`` measures which). ``calibration_cache``
    (a JSON file, written on the first call and read on the next) lets a study build many
    variants from one set of activation ranges; the ranges do not depend on which nodes are
    left in float.

    ``reduce_range`` keeps weights in 7 bits: x86 CPUs without VNNI multiply uint8 by int8 in
    pairs summed into int16 (``vpmaddubsw``), which saturates with full 8-bit weights; 7 bits
    cannot, so every CPU computes the same (without it an AVX2 machine served embeddings at
    cosine 0.88 of fp32's, mean over 57 Glint-24 faces, against 0.98 for the same graph
    computed exactly)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from service.vision.embedding import Embedder

    if not crops:
        raise ValueError("no calibration faces")
    import onnx

    unknown = set(fp32_nodes) - {node.name for node in onnx.load(str(base_weights)).graph.node}
    if unknown:  # quantize_static ignores names it does not find: the model would be all int8
        raise ModelError(f"fp32_nodes names nodes the base graph lacks: {sorted(unknown)}")
    embedder = Embedder(base, base_weights, device="cpu", intra_op_threads=1)
    name = embedder.session.get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(crops)

        def get_next(self) -> dict[str, np.ndarray] | None:
            crop = next(self._it, None)
            return None if crop is None else {name: embedder.prepare([crop])}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(base_weights), str(prepared))
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            reduce_range=reduce_range,
            nodes_to_exclude=list(fp32_nodes),
            calibration_cache_path=calibration_cache,
        )


@dataclass(frozen=True)
class ReferenceCheck:
    """How closely a derived graph reproduces the reference build on the reference faces."""

    faces: int
    min_cosine: float
    mean_cosine: float
    required: float

    @property
    def passed(self) -> bool:
        """Every reference face within the manifest's tolerance."""
        return self.min_cosine >= self.required


def reference_faces(reference: dict[str, object], base_dir: Path) -> tuple[list[Path], np.ndarray]:
    """The reference file's face paths (relative to ``base_dir``, the models folder's parent,
    each checked against its sha256) and their recorded (N, D) embeddings."""
    faces = reference["faces"]
    assert isinstance(faces, list)
    paths = []
    for face in faces:
        path = (base_dir / face["path"]).resolve()
        if not path.is_file():
            raise ModelError(f"reference face {path} is missing (see the manifest's source)")
        if hashlib.sha256(path.read_bytes()).hexdigest() != face["sha256"]:
            raise ModelError(f"reference face {path} differs from the one recorded")
        paths.append(path)
    return paths, np.asarray([face["embedding"] for face in faces], dtype=np.float32)


def embed_files(manifest: Manifest, weights: Path, paths: list[Path]) -> np.ndarray:
    """(N, D) embeddings of aligned face crops on the CPU, one thread (as fetch runs)."""
    from service.vision.embedding import Embedder
    from service.vision.image import decode_image

    embedder = Embedder(manifest, weights, device="cpu", intra_op_threads=1)
    return embedder.embed([decode_image(p.read_bytes()) for p in paths])


def check_reference(model_dir: Path, manifest: Manifest, weights: Path) -> ReferenceCheck:
    """Embed the reference faces with ``weights`` and compare with the recorded embeddings.

    Raises ModelError when the reference file is missing or differs from the pinned one."""
    source = manifest.source
    if not isinstance(source, DerivedSource):
        raise ModelError(f"{manifest.name} is not a derived model")
    path = model_dir / source.reference
    if not path.is_file():
        raise ModelError(f"{manifest.name}: its reference file {path} is missing")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != source.reference_sha256:
        raise ModelError(f"{path} differs from the one the manifest pins (reference_sha256)")
    paths, recorded = reference_faces(json.loads(raw), model_dir.parent.parent)
    cosines = (embed_files(manifest, weights, paths) * recorded).sum(axis=1)
    return ReferenceCheck(
        faces=len(paths),
        min_cosine=round(float(cosines.min()), 6),
        mean_cosine=round(float(cosines.mean()), 6),
        required=source.min_cosine,
    )
