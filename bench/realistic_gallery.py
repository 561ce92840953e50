"""Synthetic galleries with the identity structure of real SFace embeddings.

A two-covariance model (the generative model behind PLDA): an identity's centre is drawn from
N(mu, S_between), each of its faces from N(centre, S_within) and normalised to unit length. mu,
S_between and S_within are estimated from real SFace embeddings of labelled photos
(``FIT_SETS``): the LFW people with 2 photos or more (their first 10 photos) and Glint-24 (24
people, about 94 aligned crops each), embedded by the service's own recognizer
(``bench/aligned_faces.py``). S_within is the
pooled scatter of faces around their identity mean; S_between is the scatter of the identity
means less the part their own sampling noise explains (S_within / n per identity), clipped to
be positive semi-definite. Uniform noise on the sphere (the old generator) makes every identity
equally far from every other; real embeddings crowd into a low-dimensional part of the sphere,
which is what decides how well an approximate index works.

Gaussian noise of one covariance makes every pair of faces of a person almost equally similar
(in 128 dimensions the noise's length hardly varies): genuine cosines came out at std 0.056
against 0.10-0.15 for real ones, which have hard pairs (age, pose, occlusion, blur). So each
face's noise is scaled by its own log-normal factor, ``scale * exp(spread * g - spread**2)``
(g standard normal), and centres are ``mean * mu + between * (a draw of S_between)``:
``fit_spread`` chooses the four so that the genuine cosines' mean and std and the impostor
cosines' mean and std match the real ones (sampled the same way).

``check`` compares the genuine and impostor cosine distributions of a synthetic gallery with
the real ones it was fitted on. Prints JSON when run.

Usage: python bench/realistic_gallery.py [--cache runs/realistic_gallery.npz]   ('' : no cache)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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
        # per-face noise factor scale * exp(spread * g - spread**2), centres mean_scale * mu +
        # between_scale * (a draw of S_between); (1, 0, 1, 1): the plain two-covariance model
        self.scale, self.spread, self.between_scale, self.mean_scale = 1.0, 0.0, 1.0, 1.0

    def fit_spread(self, emb: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
        """Choose the per-face noise factor (``scale``, ``spread``) and the scales of the
        between-identity scatter and of the common mean so that the genuine mean and std and
        the impostor mean and std of a synthetic set (2,000 identities x 5 faces, the same
        draws for every candidate) match the real ones (least squares, Nelder-Mead)."""
        from scipy.optimize import minimize

        target = cosine_summary(emb, labels, np.random.default_rng(seed), rounded=False)
        want = np.array(
            [target[k] for k in ("genuine_mean", "genuine_std")]
            + [target[k] for k in ("impostor_mean", "impostor_std")]
        )
        rng = np.random.default_rng(seed)
        ids, per, dim = 2000, 5, len(self.mu)
        spread_c = rng.standard_normal((ids, dim), dtype=np.float32) @ self._a.T
        noise = rng.standard_normal((ids * per, dim), dtype=np.float32) @ self._b.T
        g = rng.standard_normal((ids * per, 1), dtype=np.float32)
        a, b = rng.integers(0, ids * per, (2, 50_000))
        keep = a // per != b // per
        a, b = a[keep], b[keep]

        def stats(p: np.ndarray) -> np.ndarray:
            scale, spread, between, mean = (float(v) for v in p)
            centres = mean * self.mu + between * spread_c
            v = np.repeat(centres, per, axis=0) + scale * np.exp(spread * g - spread**2) * noise
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            faces = v.reshape(ids, per, dim)
            genuine = np.concatenate(
                [np.einsum("ijd,ijd->ij", faces[:, :-s], faces[:, s:]).ravel() for s in (1, 2, 3)]
            )
            impostor = np.einsum("ij,ij->i", v[a], v[b])
            return np.array([genuine.mean(), genuine.std(), impostor.mean(), impostor.std()])

        best = minimize(
            lambda p: float(np.sum((stats(p) - want) ** 2)),
            np.array([1.0, 0.3, 1.0, 1.0]),
            method="Nelder-Mead",
            options={"xatol": 1e-4, "fatol": 1e-9, "maxiter": 2000},
        )
        self.scale, self.spread, self.between_scale, self.mean_scale = (float(v) for v in best.x)
        self.spread = abs(self.spread)
        return {
            "scale": self.scale,
            "spread": self.spread,
            "between": self.between_scale,
            "mean": self.mean_scale,
        }

    def summary(self, identities: int, per: int = 5, seed: int = 1) -> dict[str, float]:
        """Cosine statistics of a synthetic set of ``identities`` x ``per`` faces."""
        synthetic, _ = self.gallery(identities * per, per_identity=per, probes=1, seed=seed)
        synthetic_labels = (np.arange(len(synthetic)) // per).astype(str)
        return cosine_summary(
            synthetic, synthetic_labels, np.random.default_rng(seed), rounded=False
        )

    def centres(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n identity centres."""
        z = rng.standard_normal((n, len(self.mu)), dtype=np.float32)
        return (self.mean_scale * self.mu + self.between_scale * (z @ self._a.T)).astype(np.float32)

    def faces_of(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One unit-length face per centre."""
        z = rng.standard_normal(centres.shape, dtype=np.float32)
        g = rng.standard_normal((len(centres), 1), dtype=np.float32)
        factor = self.scale * np.exp(self.spread * g - self.spread**2)
        v = centres + factor * (z @ self._b.T)
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


def cosine_summary(
    emb: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, rounded: bool = True
) -> dict:
    """Genuine and impostor cosine distributions (sampled pairs: each face with its next
    three of the same person; 200,000 random pairs of different people)."""
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
    out = {
        "genuine_mean": float(g.mean()),
        "genuine_std": float(g.std()),
        "genuine_1st_percentile": float(np.quantile(g, 0.01)),
        "impostor_mean": float(impostor.mean()),
        "impostor_std": float(impostor.std()),
        "impostor_99.9th_percentile": threshold,
        "tar_at_that_threshold": float((g >= threshold).mean()),
    }
    return {k: round(v, 3) for k, v in out.items()} if rounded else out


#: the real sets the model is fitted on (CelebA-299 stays out: the 1M check's real probes)
FIT_SETS = ("lfw", "glint")


def real_embeddings(
    cache: Path | None = None, sets: tuple[str, ...] = FIT_SETS
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, identity labels "set:person") of labelled sets (``bench/aligned_faces.py``:
    LFW's central faces, Glint-24's and CelebA-299's aligned crops, all embedded by the
    service's SFace): LFW people with 2 photos or more, their first 10; every crop of the
    others. ``cache`` (optional) keeps the concatenation."""
    if cache is not None and cache.is_file():
        saved = np.load(cache)
        return saved["emb"], saved["labels"]
    from bench.aligned_faces import load

    parts = []
    for name in sets:
        d = load(name)
        keep = np.ones(len(d["labels"]), dtype=bool)
        if name == "lfw":  # people with 2 photos or more, their first 10
            seen: dict[str, int] = defaultdict(int)
            counts: dict[str, int] = defaultdict(int)
            for label in d["labels"]:
                counts[str(label)] += 1
            for i, label in enumerate(d["labels"]):
                seen[str(label)] += 1
                keep[i] = counts[str(label)] >= 2 and seen[str(label)] <= 10
        parts.append((d["emb"][keep], np.array([f"{name}:{x}" for x in d["labels"][keep]])))
    emb = np.concatenate([e for e, _ in parts]).astype(np.float32)
    labels = np.concatenate([lab for _, lab in parts])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, emb=emb, labels=labels)
    return emb, labels


def fitted_model(cache: Path | None = None) -> IdentityModel:
    """The identity model of the real embeddings with its within-identity spread fitted."""
    emb, labels = real_embeddings(cache)
    model = IdentityModel(emb, labels)
    model.fit_spread(emb, labels)
    return model


def check(model: IdentityModel, emb: np.ndarray, labels: np.ndarray) -> dict:
    """Real against synthetic (as many identities as the real sets, 5 faces each), before and
    after fitting the within-identity spread, and per real set."""
    plain = model.summary(model.identities)
    fit = model.fit_spread(emb, labels)
    spectrum = np.linalg.eigvalsh(np.cov(emb.T))[::-1]
    explained = np.cumsum(spectrum) / spectrum.sum()
    sets = sorted({str(x).split(":")[0] for x in labels})
    per_set = {}
    for name in sets:
        mask = np.char.startswith(labels.astype(str), name + ":")
        per_set[name] = cosine_summary(emb[mask], labels[mask], np.random.default_rng(1))
    return {
        "fitted_on": {"identities": model.identities, "faces": model.faces},
        "real": cosine_summary(emb, labels, np.random.default_rng(1)),
        "real_by_set": per_set,
        "synthetic_plain_gaussian": {k: round(v, 3) for k, v in plain.items()},
        "synthetic_fitted": {k: round(v, 3) for k, v in model.summary(model.identities).items()},
        "fitted": {k: round(v, 4) for k, v in fit.items()},
        "real_dims_for_90pct_variance": int(np.searchsorted(explained, 0.9) + 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", default=str(ROOT / "runs" / "realistic_gallery.npz"))
    args = parser.parse_args()
    emb, labels = real_embeddings(Path(args.cache) if args.cache else None)
    print(json.dumps(check(IdentityModel(emb, labels), emb, labels), indent=2))


if __name__ == "__main__":
    main()
