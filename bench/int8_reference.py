"""Record the int8 recognizer's reference: what its manifest pins instead of the graph's bytes.

The derived int8 graph differs in its last bits from CPU to CPU (``service.quantize``), so fetch
verifies a build by behaviour. This script writes ``reference.json`` (one aligned face per
Glint-24 identity, each with its sha256 and the embedding ``--weights`` gives it) and prints the
manifest fields to pin (``calibration_sha256``, ``reference_sha256``, ``sha256``), and, with
``--compare``, how far other builds (or the fp32 base) lie from the reference: the numbers the
tolerance ``min_cosine`` is chosen between.

    PYTHONPATH=$PWD .venv/bin/python bench/int8_reference.py [--model sface-2021dec-int8] \\
        --weights BUILD.onnx [--compare OTHER.onnx ...] [--write]

The same for every derived recognizer (``--model``: the int8 one, or the mixed int8/fp32 one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from service.models import DerivedSource, load_manifest, sha256_file
from service.quantize import calibration_photos, embed_files, files_sha256

ROOT = Path(__file__).resolve().parent.parent
FACES = ROOT.parent / "shared" / "data" / "glint24_aligned"


def reference_faces() -> list[Path]:
    """The first photo of each Glint-24 identity: aligned crops, so only the recognizer is
    tested (no detector arithmetic in between)."""
    return [sorted(person.glob("*.jpg"))[0] for person in sorted(FACES.iterdir())]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sface-2021dec-int8", help="the derived model")
    parser.add_argument("--weights", type=Path, required=True, help="the reference build")
    parser.add_argument("--compare", type=Path, action="append", default=[])
    parser.add_argument("--write", action="store_true", help="write reference.json")
    args = parser.parse_args()
    model_dir = ROOT / "models" / args.model
    manifest = load_manifest(model_dir)
    source = manifest.source
    assert isinstance(source, DerivedSource)
    faces = reference_faces()
    reference = embed_files(manifest, args.weights, faces)
    record = {
        "what": "one aligned face per Glint-24 identity and the embedding the reference build "
        "of this model gives it (bench/int8_reference.py); fetch accepts a build whose "
        "embeddings lie within the manifest's min_cosine of these",
        "build_sha256": sha256_file(args.weights),
        "faces": [
            {
                "path": Path(os.path.relpath(path, ROOT)).as_posix(),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "embedding": [round(float(v), 6) for v in vector],
            }
            for path, vector in zip(faces, reference, strict=True)
        ],
    }
    text = json.dumps(record, indent=1) + "\n"
    if args.write:
        (model_dir / source.reference).write_text(text)
    labels = (ROOT / source.calibration_labels).resolve()
    photos = calibration_photos(labels, source.calibration_count)
    out: dict[str, object] = {
        "sha256": record["build_sha256"],
        "reference_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "calibration_sha256": files_sha256(photos, labels.parent),
        "calibration_candidates": len(photos),
    }
    recorded = np.asarray([f["embedding"] for f in record["faces"]], dtype=np.float32)
    base = load_manifest(ROOT / "models" / source.base)
    for other in args.compare:
        model = base if other.name == base.file else manifest
        cosines = (embed_files(model, other, faces) * recorded).sum(axis=1)
        out[str(other)] = {
            "sha256": sha256_file(other)[:16],
            "min_cosine": round(float(cosines.min()), 6),
            "mean_cosine": round(float(cosines.mean()), 6),
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
