"""Real SFace embeddings of labelled face sets, embedded once and cached (what the realistic
generator is fitted on and what the 1M index is checked against).

- ``lfw``: all 13,233 LFW photos, the central face of each (``bench/cluster_faces.py``'s
  ``runs/cluster/marginface_lfw.npz``, detected and aligned by the service's own path);
- ``celeba``: CelebA-299's crops aligned by ``python -m training.train prepare``
  (``data/celeba299_aligned/<identity>/*.jpg``, 112x112 on the ArcFace template);
- ``glint``: Glint-24's aligned crops (``../shared/data/glint24_aligned/<name>/*.jpg``).

Aligned crops go straight to the service's recognizer (``service.vision.embedding.Embedder``,
the same graph, preprocessing and normalisation as the service), in batches of 64.

Usage: python bench/aligned_faces.py   (writes runs/real_faces/{celeba,glint}.npz)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "runs" / "real_faces"
ALIGNED = {
    "celeba": ROOT / "data" / "celeba299_aligned",
    "glint": DATA / "glint24_aligned",
}
LFW = ROOT / "runs" / "cluster" / "marginface_lfw.npz"


def embed_folder(folder: Path, batch: int = 64, per_person: int = 0) -> dict[str, np.ndarray]:
    """emb (n, d), labels (n: the sub-folder), files (n) of the aligned crops under folder
    (every one, or each person's first ``per_person``)."""
    import cv2

    from service.models import resolve_model
    from service.settings import Settings
    from service.vision.embedding import Embedder

    settings = Settings(device="cpu")
    manifest, weights = resolve_model(settings.models_dir, settings.embedder.model)
    embedder = Embedder(manifest, weights, device="cpu", max_batch=batch)
    files = []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        files += photos[:per_person] if per_person else photos
    vectors = []
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(files), batch):
        crops = []
        for path in files[start : start + batch]:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            crops.append(np.ascontiguousarray(bgr[:, :, ::-1]))  # the embedder takes RGB
        vectors.append(embedder.embed(crops))
    return {
        "emb": np.concatenate(vectors).astype(np.float32),
        "labels": np.array([p.parent.name for p in files]),
        "files": np.array([f"{p.parent.name}/{p.name}" for p in files]),
        "seconds": np.array(time.perf_counter() - started),
        "cpu_seconds": np.array(time.process_time() - cpu),
    }


def load(name: str) -> dict[str, np.ndarray]:
    """One set's embeddings (embedded and cached on first use; LFW comes from cluster_faces)."""
    if name == "lfw":
        if not LFW.is_file():
            from bench.cluster_faces import load as cluster_load

            return cluster_load("lfw")
        return dict(np.load(LFW))
    path = CACHE / f"{name}.npz"
    if path.is_file():
        return dict(np.load(path))
    out = embed_folder(ALIGNED[name])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=["lfw", "celeba", "glint"])
    args = parser.parse_args()
    for name in args.sets:
        d = load(name)
        print(name, d["emb"].shape, len(set(d["labels"].tolist())), "people", flush=True)


if __name__ == "__main__":
    main()
