"""Synthetic galleries with the identity structure of real SFace embeddings.

A two-covariance model (the generative model behind PLDA): an identity's centre is drawn from
N(mu, S_between), each of its faces from N(centre, S_within) and normalised to unit length. mu,
S_between and S_within are estimated from real SFace embeddings of labelled photos: CelebA-299
(299 people, about 21 photos each), Glint-24 (24 people, about 96 aligned crops each) and the
LFW people with 2 photos or more, each embedded by the service's own pipeline. S_within is the
pooled scatter of faces around their identity mean; S_between is the scatter of the identity
means less the part their own sampling noise explains (S_within / n per identity), clipped to
be positive semi-definite. Uniform noise on the sphere (the old generator) makes every identity
equally far from every other; real embeddings crowd into a low-dimensional part of the sphere,
which is what decides how well an approximate index works.

``check`` compares the genuine and impostor cosine distributions of a synthetic gallery with
the real ones it was fitted on. Prints JSON when run.

Usage: python bench/realistic_gallery.py [--cache runs/realistic_gallery.npz]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def real_embeddings(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, identity labels) of the three labelled sets, embedded once and cached."""
    if cache.is_file():
        saved = np.load(cache)
        return saved["emb"], saved["labels"]
    clustered = [
        ROOT / "runs" / "cluster" / f"marginface_{n}.npz" for n in ("celeba", "glint", "lfw")
    ]
    if all(p.is_file() for p in clustered):  # the same photos, embedded by bench/cluster_faces.py
        parts = []
        for name, path in zip(("celeba", "glint", "lfw"), clustered, strict=True):
            d = np.load(path)
            keep = np.ones(len(d["labels"]), dtype=bool)
            if name == "lfw":  # people with 2 photos or more, their first 10
                seen: dict[str, int] = defaultdict(int)
                counts = defaultdict(int)
                for label in d["labels"]:
                    counts[str(label)] += 1
                for i, label in enumerate(d["labels"]):
                    seen[str(label)] += 1
                    keep[i] = counts[str(label)] >= 2 and seen[str(label)] <= 10
            parts.append((d["emb"][keep], np.array([f"{name}:{x}" for x in d["labels"][keep]])))
        return (
            np.concatenate([e for e, _ in parts]).astype(np.float32),
            np.concatenate([lab for _, lab in parts]),
        )
    from service.errors import MarginFaceError
    from service.recognition import build_pipeline
    from service.settings import Settings
    from service.vision.image import decode_image

    pipe = build_pipeline(Settings(device="cpu"), batching=False)
    vectors: list[np.ndarray] = []
    labels: list[str] = []

    def add(path: Path, label: str, *, aligned: bool = False) -> None:
        try:
            image = decode_image(path.read_bytes())
            vectors.append(pipe.choose_face(image, aligned=aligned).face.embedding)
            labels.append(label)
        except MarginFaceError:
            pass

    for row in csv.DictReader((DATA / "celeba299/labels.csv").open()):
        add(DATA / "celeba299" / row["path"], f"celeba:{row['identity']}")
    for person in sorted((DATA / "glint24_aligned").iterdir()):
        for photo in sorted(person.glob("*.jpg")):
            add(photo, f"glint:{person.name}", aligned=True)
    for person in sorted((DATA / "lfw/images").iterdir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= 2:
            for photo in photos[:10]:
                add(photo, f"lfw:{person.name}")
    emb, lab = np.stack(vectors).astype(np.float32), np.array(labels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, emb=emb, labels=lab)
    return emb, lab


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))).astype(np.float32)


class IdentityModel:
    """mu, S_between and S_within of a set of labelled embeddings, and samples from them."""

    def __init__(self, emb: np.ndarray, labels: np.ndarray) -> None:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            groups[str(label)].append(i)
        groups = {k: v for k, v in groups.items() if len(v) >= 2}
        means = np.stack([emb[v].mean(axis=0) for v in groups.values()])
        residuals = np.concatenate([emb[v] - emb[v].mean(axis=0) for v in groups.values()])
        sizes = np.array([len(v) for v in groups.values()])
        dof = len(residuals) - len(groups)
        self.within = residuals.T @ residuals / dof
        self.mu = means.mean(axis=0)
        centred = means - self.mu
        self.between = centred.T @ centred / (len(means) - 1) - self.within * np.mean(1 / sizes)
        self.identities = len(groups)
        self.faces = int(sizes.sum())
        self._a = _sqrt_psd(self.between)
        self._b = _sqrt_psd(self.within)

    def centres(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n identity centres."""
        z = rng.standard_normal((n, len(self.mu)), dtype=np.float32)
        return (self.mu + z @ self._a.T).astype(np.float32)

    def faces_of(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One unit-length face per centre."""
        z = rng.standard_normal(centres.shape, dtype=np.float32)
        v = centres + z @ self._b.T
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def gallery(
        self, n: int, per_identity: int = 5, probes: int = 1000, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """n faces (``per_identity`` per identity) and ``probes`` new faces of enrolled
        identities, generated in chunks (memory: the output and one chunk)."""
        rng = np.random.default_rng(seed)
        identities = max(1, n // per_identity)
        centres = self.centres(identities, rng)
        out = np.empty((n, len(self.mu)), dtype=np.float32)
        step = 200_000
        for start in range(0, n, step):
            stop = min(n, start + step)
            owner = np.arange(start, stop) // per_identity % identities
            out[start:stop] = self.faces_of(centres[owner], rng)
        owners = rng.integers(0, identities, probes)
        return out, self.faces_of(centres[owners], rng)


def cosine_summary(emb: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> dict:
    """Genuine and impostor cosine distributions (sampled pairs)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        groups[str(label)].append(i)
    genuine = []
    for members in groups.values():
        for a in range(len(members)):
            for b in range(a + 1, min(len(members), a + 4)):
                genuine.append(float(emb[members[a]] @ emb[members[b]]))
    a, b = rng.integers(0, len(emb), 200_000), rng.integers(0, len(emb), 200_000)
    keep = labels[a] != labels[b]
    impostor = np.einsum("ij,ij->i", emb[a[keep]], emb[b[keep]])
    g = np.asarray(genuine)
    threshold = float(np.quantile(impostor, 1 - 1e-3))
    return {
        "genuine_mean": round(float(g.mean()), 3),
        "genuine_std": round(float(g.std()), 3),
        "impostor_mean": round(float(impostor.mean()), 3),
        "impostor_std": round(float(impostor.std()), 3),
        "impostor_99.9th_percentile": round(threshold, 3),
        "tar_at_that_threshold": round(float((g >= threshold).mean()), 3),
    }


def check(model: IdentityModel, emb: np.ndarray, labels: np.ndarray) -> dict:
    """Real against synthetic (same number of identities and faces per identity)."""
    rng = np.random.default_rng(1)
    per = max(2, round(model.faces / model.identities))
    synthetic, _ = model.gallery(model.identities * per, per_identity=per, probes=1, seed=1)
    synthetic_labels = np.arange(len(synthetic)) // per
    spectrum = np.linalg.eigvalsh(np.cov(emb.T))[::-1]
    explained = np.cumsum(spectrum) / spectrum.sum()
    return {
        "fitted_on": {"identities": model.identities, "faces": model.faces},
        "real": cosine_summary(emb, labels, rng),
        "synthetic": cosine_summary(synthetic, synthetic_labels.astype(str), rng),
        "real_dims_for_90pct_variance": int(np.searchsorted(explained, 0.9) + 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", default=str(ROOT / "runs" / "realistic_gallery.npz"))
    args = parser.parse_args()
    emb, labels = real_embeddings(Path(args.cache))
    print(json.dumps(check(IdentityModel(emb, labels), emb, labels), indent=2))


if __name__ == "__main__":
    main()
