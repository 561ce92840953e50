"""Does the face quality score earn its place? Error-versus-reject curves, as the face-quality
field measures it (Grother and Tabassi): FNMR at a fixed FAR 1e-3 threshold as the pairs whose
lower quality is the lowest are set aside, 0 to 20%, against setting aside pairs at random.

Weights and the sharpness scale are chosen on CelebA-299 (training data: genuine pairs within
each identity, the threshold from 1,000,000 sampled impostor pairs); the curve is then measured
on LFW View-2 (6,000 pairs, the face nearest the centre, the manifest's calibrated threshold for
FAR 1e-3). Prints JSON; writes the PNG and the per-face features it measured.

Usage: python bench/quality_erc.py [--out docs] [--cache runs/quality]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.calibration import central_face  # noqa: E402
from service.evaluation import read_lfw_pairs, threshold_at_far  # noqa: E402
from service.models import QualitySpec  # noqa: E402
from service.recognition import build_pipeline  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.vision.image import decode_image  # noqa: E402

FRACTIONS = np.round(np.arange(0.0, 0.2001, 0.01), 2)


def measure(paths: list[Path], pick: str, cache: Path) -> dict[str, np.ndarray]:
    """Per image: embedding, raw quality measurements (or NaN when no face)."""
    if cache.is_file():
        return dict(np.load(cache, allow_pickle=False))
    pipe = build_pipeline(Settings(device="cpu", intra_op_threads=1), batching=False)
    dim = pipe.embedder.embedding_dim
    emb = np.full((len(paths), dim), np.nan, np.float32)
    raw = np.full((len(paths), 6), np.nan, np.float64)  # iod, sharpness, yaw, pitch, score, norm
    for i, path in enumerate(paths):
        image = decode_image(path.read_bytes())
        if pick == "central":
            face, _ = central_face(pipe, image)
            faces = pipe.embed_detections(image, [face]) if face is not None else []
        else:
            try:
                faces = [pipe.choose_face(image).face]
            except Exception:
                faces = []
        if not faces or faces[0].quality is None:
            continue
        f = faces[0]
        qa = f.quality
        emb[i] = f.embedding
        raw[i] = [qa.interocular_px, qa.sharpness, qa.pose.yaw_deg, qa.pose.pitch_deg,
                  f.score, qa.feature_norm or np.nan]  # fmt: skip
        if i % 500 == 0:
            print(f"{cache.name}: {i}/{len(paths)}", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, emb=emb, raw=raw)
    return {"emb": emb, "raw": raw}


def factors(
    raw: np.ndarray, sharp_log10: tuple[float, float], spec: QualitySpec, iod0: float
) -> dict[str, np.ndarray]:
    """The quality factors of service.vision.quality from the raw measurements (the same
    formulas, vectorised)."""
    lo, hi = sharp_log10
    return {
        "size": np.clip(raw[:, 0] / iod0, 0, 1),
        "sharpness": np.clip((np.log10(np.maximum(raw[:, 1], 1e-3)) - lo) / (hi - lo), 0, 1),
        "pose": np.maximum(0, np.cos(np.radians(raw[:, 2])) * np.cos(np.radians(raw[:, 3]))),
        "detection": np.clip(raw[:, 4], 0, 1),
        "recognizability": np.clip(
            (raw[:, 5] - spec.norm_floor) / ((spec.norm_reference or 1.0) - spec.norm_floor), 0, 1
        ),
    }


def combine(f: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    total = sum(weights.values())
    return np.exp(sum(w * np.log(np.maximum(f[k], 1e-6)) for k, w in weights.items()) / total)


def erc(
    scores: np.ndarray, same: np.ndarray, pair_quality: np.ndarray, threshold: float
) -> np.ndarray:
    """FNMR at ``threshold`` after setting aside each fraction of the genuine pairs, lowest
    pair quality first."""
    g_scores = scores[same]
    order = np.argsort(pair_quality[same], kind="stable")
    return np.array(
        [float((g_scores[order[round(r * len(order)) :]] < threshold).mean()) for r in FRACTIONS]
    )


def erc_random(
    scores: np.ndarray, same: np.ndarray, threshold: float, rng: np.random.Generator
) -> np.ndarray:
    """The same, setting aside pairs at random (mean of 50 draws; it does not depend on the
    quality, so it is computed once per data set)."""
    g_scores = scores[same]
    n = len(g_scores)
    return np.array(
        [
            np.mean(
                [
                    float((g_scores[rng.permutation(n)[round(r * n) :]] < threshold).mean())
                    for _ in range(50)
                ]
            )
            for r in FRACTIONS
        ]
    )


def weight_candidates(names: list[str]) -> dict[str, dict[str, float]]:
    """Each factor alone, all with equal weights, all but one, and a grid: recognizability 1,
    every other factor 0, 0.25, 0.5 or 1."""
    out = {k: {k: 1.0} for k in names} | {"all, equal weights": dict.fromkeys(names, 1.0)}
    for drop in names:
        out[f"all but {drop}"] = {k: 1.0 for k in names if k != drop}
    others = [k for k in names if k != "recognizability"]
    for values in itertools.product((0.0, 0.25, 0.5, 1.0), repeat=len(others)):
        weights = {"recognizability": 1.0} | {
            k: v for k, v in zip(others, values, strict=True) if v
        }
        out["grid: " + ", ".join(f"{k} {v:g}" for k, v in weights.items())] = weights
    return out


def percentiles(values: np.ndarray) -> dict[str, float]:
    """The low tail and the median of a score."""
    points = np.percentile(values, [1, 5, 10, 50])
    return {f"p{p}": round(float(v), 3) for p, v in zip((1, 5, 10, 50), points, strict=True)}


def celeba_pairs(
    n_images: int, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, same): every genuine pair within an identity, and 1,000,000 impostor pairs."""
    by_id: dict[int, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_id[int(lab)].append(i)
    genuine = [(a, b) for ids in by_id.values() for a, b in itertools.combinations(ids, 2)]
    a = rng.integers(0, n_images, 1_000_000)
    b = rng.integers(0, n_images, 1_000_000)
    keep = labels[a] != labels[b]
    ga, gb = np.array(genuine).T
    return (np.concatenate([ga, a[keep]]), np.concatenate([gb, b[keep]]),
            np.concatenate([np.ones(len(ga), bool), np.zeros(int(keep.sum()), bool)]))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--cache", default=str(ROOT / "runs" / "quality"))
    args = parser.parse_args()
    data, out, cache = Path(args.data), Path(args.out), Path(args.cache)
    rng = np.random.default_rng(0)
    pipe_manifest = build_pipeline(Settings(device="cpu"), batching=False).embedder.manifest
    template = np.asarray(pipe_manifest.alignment_template)
    iod0 = float(np.linalg.norm(template[1] - template[0]))
    spec = pipe_manifest.quality or QualitySpec(norm_reference=12.0)

    # ---- CelebA-299: choose the sharpness scale and the weights
    rows = list(csv.DictReader((data / "celeba299/labels.csv").open()))
    c_paths = [data / "celeba299" / r["path"] for r in rows]
    c_labels = np.array([int(r["identity"]) for r in rows])
    c = measure(c_paths, "choice", cache / "celeba.npz")
    ok = np.isfinite(c["raw"]).all(axis=1) & np.isfinite(c["emb"]).all(axis=1)
    sharp = np.log10(np.maximum(c["raw"][ok, 1], 1e-3))
    sharp_scale = (float(np.percentile(sharp, 1)), float(np.percentile(sharp, 50)))
    a, b, same = celeba_pairs(len(c_paths), c_labels, rng)
    valid = ok[a] & ok[b]
    a, b, same = a[valid], b[valid], same[valid]
    c_scores = np.einsum("ij,ij->i", c["emb"][a], c["emb"][b])
    c_thr = threshold_at_far(c_scores[~same], 1e-3)
    f = factors(c["raw"], sharp_scale, spec, iod0)
    c_random = erc_random(c_scores, same, c_thr, rng)
    choice = {}
    for name, weights in weight_candidates(list(f)).items():
        qual = combine(f, weights)
        by_q = erc(c_scores, same, np.minimum(qual[a], qual[b]), c_thr)
        choice[name] = {
            "weights": weights,
            "area_gain": float(np.trapezoid(c_random - by_q, FRACTIONS)),
            "fnmr_at_0": float(by_q[0]),
            "fnmr_at_10pct": float(by_q[10]),
            "random_at_10pct": float(c_random[10]),
        }
    best = max(choice, key=lambda k: choice[k]["area_gain"])

    # ---- LFW: the curve of the chosen score
    pairs = read_lfw_pairs(data / "lfw/pairs.txt", data / "lfw/images")
    paths = sorted({p.a for p in pairs} | {p.b for p in pairs})
    index = {p: i for i, p in enumerate(paths)}
    m = measure(paths, "central", cache / "lfw.npz")
    ia = np.array([index[p.a] for p in pairs])
    ib = np.array([index[p.b] for p in pairs])
    lfw_same = np.array([p.same for p in pairs])
    emb = np.nan_to_num(m["emb"])
    scores = np.einsum("ij,ij->i", emb[ia], emb[ib])
    calibration = pipe_manifest.calibration
    thr = (
        calibration.thresholds_by_far["1e-03"]
        if calibration
        else threshold_at_far(scores[~lfw_same], 1e-3)
    )
    lf = factors(np.nan_to_num(m["raw"]), sharp_scale, spec, iod0)
    report_curves = {}
    lfw_random = erc_random(scores, lfw_same, thr, rng)
    shown = (best, "all, equal weights", "recognizability", "sharpness", "pose", "size")
    for name in dict.fromkeys(shown):
        qual = combine(lf, choice[name]["weights"])
        by_q = erc(scores, lfw_same, np.minimum(qual[ia], qual[ib]), thr)
        report_curves[name] = {"by_quality": by_q.tolist(), "at_random": lfw_random.tolist()}
    chosen = report_curves[best]
    result = {
        "sharpness_log10_scale": [round(v, 3) for v in sharp_scale],
        "chosen_score_percentiles": {
            "celeba_main_faces": percentiles(combine(f, choice[best]["weights"])[ok]),
            "lfw_central_faces": percentiles(
                combine(lf, choice[best]["weights"])[np.isfinite(m["raw"]).all(axis=1)]
            ),
        },
        "celeba": {
            "pairs_genuine": int(same.sum()),
            "pairs_impostor": int((~same).sum()),
            "threshold_far_1e-3": c_thr,
            "candidates": dict(sorted(choice.items(), key=lambda kv: -kv[1]["area_gain"])[:15]),
            "candidates_tried": len(choice),
            "chosen": best,
            "chosen_weights": choice[best]["weights"],
        },
        "lfw": {
            "pairs": len(pairs),
            "threshold_far_1e-3": thr,
            "fractions": FRACTIONS.tolist(),
            "curves": report_curves,
            "chosen_at_5pct": {
                "by_quality": chosen["by_quality"][5],
                "at_random": chosen["at_random"][5],
            },
            "chosen_at_10pct": {
                "by_quality": chosen["by_quality"][10],
                "at_random": chosen["at_random"][10],
            },
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_erc.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(FRACTIONS * 100, np.array(chosen["at_random"]) * 100, "k--", label="rejected at random")
    for name, curve in report_curves.items():
        ax.plot(FRACTIONS * 100, np.array(curve["by_quality"]) * 100, label=f"by quality: {name}",
                lw=2.5 if name == best else 1)  # fmt: skip
    ax.set(xlabel="pairs set aside (lowest quality first), %", ylabel="FNMR at FAR 1e-3, %",
           title="LFW View-2: error versus reject")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "quality_erc.png", dpi=110)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k != "lfw"}
            | {
                "lfw": {
                    k: result["lfw"][k]
                    for k in ("pairs", "threshold_far_1e-3", "chosen_at_5pct", "chosen_at_10pct")
                }
            },
            indent=2,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
