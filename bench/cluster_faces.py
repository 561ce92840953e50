"""The labelled face sets the clustering benchmarks use, embedded once and cached.

LFW (all 13,233 images, 5,749 people), CelebA-299 (6,300 raw photos, 299 people) and Glint-24
(2,259 aligned crops, 24 people), each photo's face nearest the centre found and embedded by
``service.clustering.find_faces`` (the path ``marginface cluster --faces central`` takes), and
the truth label of each face from its folder (LFW, Glint-24) or labels.csv (CelebA-299).
Photos without a face are left out and counted.

Usage: python bench/cluster_faces.py [--processes 2]   (writes runs/cluster/marginface_*.npz)
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "runs" / "cluster"
SETS = {
    "lfw": DATA / "lfw" / "images",
    "celeba": DATA / "celeba299" / "images",
    "glint": DATA / "glint24_aligned",
}


def truth_of(name: str, files: list[str]) -> np.ndarray:
    """One identity label per file."""
    if name == "celeba":
        by_file = {
            Path(r["path"]).name: r["identity"]
            for r in csv.DictReader((DATA / "celeba299" / "labels.csv").open())
        }
        return np.array([by_file[Path(f).name] for f in files])
    return np.array([f.split("/")[0] for f in files])


def load(name: str, processes: int = 2) -> dict[str, np.ndarray]:
    """emb (n, d), labels (n), files (n), and the embedding's seconds and photo counts."""
    path = CACHE / f"marginface_{name}.npz"
    if path.is_file():
        return dict(np.load(path))
    from service.clustering import find_faces
    from service.recognition import build_pipeline
    from service.settings import Settings

    settings = Settings(device="cpu")
    pipeline = build_pipeline(settings, batching=False)
    started, cpu = time.perf_counter(), time.process_time()
    found = find_faces(SETS[name], settings, pipeline, which="central", processes=processes)
    files = [f.file for f in found.faces]
    out = {
        "emb": found.embeddings,
        "labels": truth_of(name, files),
        "files": np.array(files),
        "photos": np.array(found.photos),
        "without_face": np.array(len(found.without_face)),
        "seconds": np.array(time.perf_counter() - started),
        "parent_cpu_seconds": np.array(time.process_time() - cpu),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def main() -> None:
    """Embed every set that is not cached yet."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    args = parser.parse_args()
    for name in args.sets:
        d = load(name, args.processes)
        print(name, d["emb"].shape, "without face:", int(d["without_face"]), flush=True)


if __name__ == "__main__":
    main()
