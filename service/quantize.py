"""Static int8 quantization of a recognizer, from calibration faces the service aligned itself.

A quantized recognizer is a model of its own (its embeddings are not comparable with the fp32
ones to the precision a gallery needs, so it has its own model id, manifest and calibration).
It is derived at fetch time (``service.models.DerivedSource``): the base model's weights,
QDQ format, int8 per-channel weights and uint8 activations, activation ranges from MinMax over
the calibration faces (CelebA-299 photos, never LFW), each detected and aligned by the base
pipeline exactly as the service does. ONNX Runtime's quantizer is deterministic for the same
inputs and version, so the produced file's sha256 is pinned in the manifest like any other.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from service.models import Manifest


def calibration_faces(
    labels_csv: Path, count: int, detector_dir: Path, manifest: Manifest
) -> list[np.ndarray]:
    """``count`` aligned crops of the photos listed in ``labels_csv`` (path,identity), spread
    over the identities (every k-th row), each photo's chosen face as enrollment chooses it."""
    from service.models import resolve_model
    from service.vision.alignment import align_face
    from service.vision.detection import create_detector
    from service.vision.image import decode_image

    rows = list(csv.DictReader(labels_csv.open()))
    step = max(1, len(rows) // max(count, 1))
    det_manifest, det_weights = resolve_model(detector_dir.parent, detector_dir.name)
    detector = create_detector(det_manifest, det_weights, device="cpu", intra_op_threads=1)
    template = np.asarray(manifest.alignment_template, dtype=np.float64)
    size = (manifest.input.width or 112, manifest.input.height or 112)
    crops: list[np.ndarray] = []
    for row in rows[::step]:
        if len(crops) >= count:
            break
        image = decode_image((labels_csv.parent / row["path"]).read_bytes())
        found = detector.detect(image)
        if not found:
            continue
        face = max(found, key=lambda d: d.area)
        crops.append(align_face(image, face.landmarks, template=template, size=size))
    return crops


def quantize_recognizer(
    base: Manifest, base_weights: Path, crops: list[np.ndarray], target: Path
) -> None:
    """Write the int8 QDQ graph of ``base`` to ``target``, calibrated on ``crops``."""
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
        )
