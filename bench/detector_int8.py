"""Does int8 pay for the detector? RetinaFace-MNet0.25 quantized as the recognizer is (static
QDQ, per-channel int8 weights, uint8 activations, MinMax ranges from 100 CelebA-299 photos, the
graph first converted from opset 11 to 13, which per-channel QDQ needs), then both graphs timed
at LFW's input size (256 x 256 after padding) with one thread, and the detector's whole
``detect`` split into its parts (preprocess, ONNX Runtime, decode, the rest). Prints JSON.

Usage: python bench/detector_int8.py [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

from service.models import resolve_model  # noqa: E402
from service.vision.detection import create_detector  # noqa: E402
from service.vision.image import decode_image  # noqa: E402


def median_ms(session: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 3)


def main() -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    manifest, weights = resolve_model(ROOT / "models", "retinaface-mnet025")
    detector = create_detector(manifest, weights, device="cpu", intra_op_threads=1)
    name = detector.session.get_inputs()[0].name
    photos = sorted((DATA / "celeba299/images").glob("*.jpg"))[::60][:100]
    tensors = [detector._preprocess(decode_image(p.read_bytes()), 960, 0)[0] for p in photos]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(tensors)

        def get_next(self) -> dict[str, np.ndarray] | None:
            t = next(self._it, None)
            return None if t is None else {name: t}

    lfw = sorted((DATA / "lfw/images").glob("*/*.jpg"))[::130][:100]
    images = [decode_image(p.read_bytes()) for p in lfw]
    feed = {name: detector._preprocess(images[0], 960, 0)[0]}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    report: dict[str, object] = {"input": list(feed[name].shape), "threads": 1}
    with tempfile.TemporaryDirectory() as tmp:
        op13, pre, int8 = (str(Path(tmp) / n) for n in ("op13.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(version_converter.convert_version(onnx.load(str(weights)), 13), op13)
        quant_pre_process(op13, pre)
        quantize_static(
            pre,
            int8,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
        for label, path in (("fp32_ms", str(weights)), ("int8_ms", int8)):
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            report[label] = median_ms(session, feed, args.runs)
    parts: dict[str, list[float]] = {"preprocess": [], "onnxruntime": [], "decode": [], "all": []}
    for _ in range(3):
        for image in images:
            a = time.perf_counter()
            tensor, _ = detector._preprocess(image, 960, 0)
            b = time.perf_counter()
            outputs = detector.session.run(None, {name: tensor})
            c = time.perf_counter()
            detector.decode(list(outputs), tensor.shape[2], tensor.shape[3], 0.6)
            d = time.perf_counter()
            detector.detect(image)
            parts["preprocess"].append(b - a)
            parts["onnxruntime"].append(c - b)
            parts["decode"].append(d - c)
            parts["all"].append(time.perf_counter() - d)
    report["detect_ms_by_part_fp32"] = {
        k: round(1000 * statistics.median(v), 3) for k, v in parts.items()
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
