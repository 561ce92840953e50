"""Which layers of the int8 recognizer cost accuracy: per-layer sensitivity on held-out faces.

The int8 recipe (``service.quantize``, the same calibration faces and activation ranges as
``models fetch --derived``) is rebuilt with one layer group quantized and the rest left in
float (``--mode only``: what quantizing that layer alone costs) and with every group quantized
but one (``--mode allbut``: what keeping that one in float gives back); each build embeds the
aligned crops of the CelebA-299 identities held out from training (``--skip-first``, as
``bench/celeba_heldout_pairs.py``), the photos that calibrate int8 left out, with the served
kernels (one thread). Never LFW: LFW is what the chosen model is judged on afterwards.

Per build: 10-fold accuracy and TAR at FAR on every genuine pair and five times as many
impostor pairs (seed 0), TAR at FAR 1e-4 on all cross-identity pairs, and the cosine of each
embedding to the float one (mean and worst). ``--fp32`` builds the mixed model that keeps the
named groups in float and reports it beside full int8 and float. Prints JSON.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python bench/int8_sensitivity.py \\
        --aligned data/celeba299_aligned --skip-first 200 --mode only --mode allbut \\
        [--fp32 conv_14 --fp32 pre_fc1 ...] > runs/int8_sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.evaluation import threshold_at_far, verification_report  # noqa: E402
from service.models import DerivedSource, load_manifest  # noqa: E402
from service.quantize import calibration_faces, quantize_recognizer  # noqa: E402
from service.vision.embedding import Embedder  # noqa: E402
from service.vision.image import decode_image  # noqa: E402

MODEL = ROOT / "models" / "sface-2021dec-int8"
LAYER = re.compile(r"^(conv_\d+(?:_dw)?)_")
INPUT_NODES = {"_minusscalar0": "input", "_mulscalar0": "input"}
FLOAT_OPS = {"Constant", "Dropout", "Flatten", "Reshape"}


def layer_groups(weights: Path) -> dict[str, list[str]]:
    """The base graph's quantizable nodes by layer: a convolution with its PRelu (rewritten as
    Min, Mul, Add), the input scaling, and the head's nodes each on their own."""
    groups: dict[str, list[str]] = defaultdict(list)
    for node in onnx.load(str(weights)).graph.node:
        if node.op_type in FLOAT_OPS:
            continue
        match = LAYER.match(node.name)
        key = match.group(1) if match else INPUT_NODES.get(node.name, node.name)
        groups[key].append(node.name)
    return dict(groups)


def held_out_crops(
    aligned: Path, skip_first: int, calibration: set[str], per_identity: int = 0
) -> tuple[list[Path], np.ndarray]:
    """The aligned crops of the identities after the first ``skip_first`` (sorted by name),
    without the photos calibration uses (the first ``per_identity`` of each, 0: all); and each
    crop's identity index."""
    folders = sorted(d for d in aligned.iterdir() if d.is_dir())[skip_first:]
    paths, labels = [], []
    for index, folder in enumerate(folders):
        kept = [p for p in sorted(folder.glob("*.jpg")) if p.stem not in calibration]
        for path in kept[:per_identity] if per_identity else kept:
            paths.append(path)
            labels.append(index)
    return paths, np.asarray(labels)


class Pairs:
    """Every genuine pair and ``ratio`` times as many impostor pairs (seed 0), in ten folds;
    plus the mask of all cross-identity pairs for the low-FAR figure."""

    def __init__(self, labels: np.ndarray, ratio: int = 5) -> None:
        i, j = np.triu_indices(len(labels), k=1)
        same = labels[i] == labels[j]
        rng = np.random.default_rng(0)
        genuine = np.flatnonzero(same)
        impostor = rng.choice(np.flatnonzero(~same), size=ratio * len(genuine), replace=False)
        chosen = rng.permutation(np.concatenate([genuine, impostor]))
        self.a, self.b, self.same = i[chosen], j[chosen], same[chosen]
        self.folds = np.arange(len(chosen)) * 10 // len(chosen)
        self.all_i, self.all_j, self.all_same = i, j, same

    def report(self, emb: np.ndarray) -> dict[str, float]:
        scores = np.einsum("ij,ij->i", emb[self.a], emb[self.b])
        rep = verification_report(scores, self.same, self.folds, fars=(1e-2, 1e-3))
        everything = np.einsum("ij,ij->i", emb[self.all_i], emb[self.all_j])
        t = threshold_at_far(everything[~self.all_same], 1e-4)
        tar = rep["tar_at_far"]
        assert isinstance(tar, dict)
        return {
            "kfold_accuracy": round(float(rep["kfold_accuracy_mean"]), 5),  # type: ignore[arg-type]
            "tar_far_1e-2": round(float(tar["1e-02"]["tar"]), 5),
            "tar_far_1e-3": round(float(tar["1e-03"]["tar"]), 5),
            "tar_far_1e-4_all": round(float((everything[self.all_same] >= t).mean()), 5),
        }


def embed(
    manifest: object, weights: Path, images: list[np.ndarray]
) -> tuple[np.ndarray, float, float]:
    """Embeddings (one thread, the served kernels), wall and CPU seconds."""
    embedder = Embedder(manifest, weights, device="cpu", intra_op_threads=1)  # type: ignore[arg-type]
    wall, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
    out = np.concatenate([embedder.embed(images[k : k + 32]) for k in range(0, len(images), 32)])
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu
    return out, time.perf_counter() - wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aligned", type=Path, default=ROOT / "data" / "celeba299_aligned")
    parser.add_argument("--skip-first", type=int, default=200)
    parser.add_argument("--per-identity", type=int, default=0, help="crops per identity (0: all)")
    parser.add_argument("--mode", action="append", choices=("only", "allbut"), default=[])
    parser.add_argument("--fp32", action="append", default=[], help="a layer group kept in float")
    parser.add_argument(
        "--groups", nargs="*", help="only these groups, a+b for two at once (default: each)"
    )
    parser.add_argument("--save", type=Path, help="write the mixed (--fp32) graph here")
    args = parser.parse_args()

    manifest = load_manifest(MODEL)
    source = manifest.source
    assert isinstance(source, DerivedSource)
    base = load_manifest(ROOT / "models" / source.base)
    base_weights = ROOT / "models" / source.base / base.file
    labels_csv = (ROOT / source.calibration_labels).resolve()
    crops = calibration_faces(
        labels_csv, source.calibration_count, ROOT / "models" / source.detector, base
    )
    from service.quantize import calibration_photos

    calibration = {p.stem for p in calibration_photos(labels_csv, source.calibration_count)}
    paths, labels = held_out_crops(args.aligned, args.skip_first, calibration, args.per_identity)
    images = [decode_image(p.read_bytes()) for p in paths]
    pairs = Pairs(labels)
    groups = layer_groups(base_weights)
    every = [n for nodes in groups.values() for n in nodes]
    report: dict[str, object] = {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "held_out_identities": int(labels.max() + 1),
        "crops": len(paths),
        "genuine_pairs": int(pairs.same.sum()),
        "impostor_pairs": int((~pairs.same).sum()),
        "all_cross_identity_pairs": int((~pairs.all_same).sum()),
        "calibration_faces": len(crops),
        "groups": {k: len(v) for k, v in groups.items()},
    }
    print(json.dumps(report), file=sys.stderr)
    fp32, wall, cpu = embed(base, base_weights, images)
    report["fp32"] = {**pairs.report(fp32), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "ranges.json"

        def measure(exclude: list[str], save: Path | None = None) -> dict[str, object]:
            out = Path(tmp) / "variant.onnx"
            quantize_recognizer(
                base, base_weights, crops, out, fp32_nodes=exclude, calibration_cache=cache
            )
            emb, wall, cpu = embed(manifest, out, images)
            cos = (emb * fp32).sum(axis=1)
            if save is not None:
                save.write_bytes(out.read_bytes())
            row = {
                **pairs.report(emb),
                "cos_fp32_mean": round(float(cos.mean()), 5),
                "cos_fp32_min": round(float(cos.min()), 5),
                "wall_s": round(wall, 1),
                "cpu_s": round(cpu, 1),
            }
            print(json.dumps(row), file=sys.stderr)
            return row

        report["int8"] = measure([])
        chosen = args.groups or list(groups)
        for mode in args.mode:
            rows = {}
            for name in chosen:  # "a+b": groups a and b together
                inside = {n for g in name.split("+") for n in groups[g]}
                exclude = (
                    [n for n in every if n not in inside] if mode == "only" else sorted(inside)
                )
                print(f"{mode} {name}", file=sys.stderr)
                rows[name] = measure(exclude)
            report[mode] = rows
        if args.fp32:
            keep = sorted(n for g in args.fp32 for n in groups[g])
            report["mixed"] = {
                "fp32_groups": args.fp32,
                "fp32_nodes": keep,
                **measure(keep, args.save),
            }
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
