"""Which face of a photo verify and enroll use, replayed on every LFW image.

Collects once, through the service's own pipeline, every detection of every LFW image at the
service's detection settings (and, for an image where they find none, at the evaluation's
fallback settings): box, landmarks, detector score, size, the recognizer's feature norm and
embedding, the quality score, and the second detector's (YuNet's) score on the same box.
Cached in ``--cache`` (one .npz per data set, shared with ``bench/face_validity.py``), since
it takes minutes and every rule below replays it in milliseconds.

Then replays rules of the form ``FacePipeline.choose_face`` applies (the manifest's validity
rule, then the face of highest quality x sqrt(area share) x centrality) and reports for each:
how many images lose their only face to validity, how many choose another face than the one
nearest the centre (LFW's labelled person), and LFW View-2 10-fold accuracy on all 6,000
pairs with the chosen faces (a faceless image scores -1, as ``marginface eval lfw`` does).
The replay of the manifest's own rule must match ``marginface eval lfw --face choice``.

Usage: python bench/face_choice.py [--data ../shared/data] [--cache runs/validity]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.calibration import FALLBACK_OPTIONS  # noqa: E402
from service.evaluation import kfold_accuracy, read_lfw_pairs  # noqa: E402
from service.models import FaceValidity, ValidityBand, load_manifest  # noqa: E402
from service.recognition import build_pipeline  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.vision.image import decode_image  # noqa: E402
from service.vision.pipeline import (  # noqa: E402
    CENTRE_FLOOR,
    CHOICE_CANDIDATES,
    SecondOpinion,
    centrality,
)

#: centrality floors compared (1: no centre prior)
FLOORS = (1.0, 0.75, 0.6, 0.5, 0.4, 0.25)


def collect(images: list[Path], settings: Settings) -> dict[str, np.ndarray]:
    """Every detection of every image, with what the choice rules need."""
    pipe = build_pipeline(settings, batching=False)
    if pipe.second_detector is None:
        raise SystemExit("the recognizer's manifest names no second detector")
    cols: dict[str, list[Any]] = {
        k: [] for k in ("image", "box", "landmarks", "score", "size", "norm", "second", "quality")
    }
    cols |= {"embedding": [], "fallback": []}
    shapes = []
    for i, path in enumerate(tqdm(images, desc="detecting", unit="img")):
        image = decode_image(path.read_bytes())
        shapes.append(image.shape[:2])
        fallback = False
        dets = pipe.detect(image)
        if not dets:
            dets, fallback = pipe.detect(image, FALLBACK_OPTIONS), True
        opinion = SecondOpinion(pipe.second_detector, image)
        for d, f in zip(dets, pipe.embed_detections(image, dets, opinion), strict=True):
            assert f.quality is not None and f.quality.feature_norm is not None
            cols["image"].append(i)
            cols["box"].append(d.box)
            cols["landmarks"].append(d.landmarks)
            cols["score"].append(d.score)
            cols["size"].append(d.size)
            cols["norm"].append(f.quality.feature_norm)
            cols["second"].append(opinion.score(d.box))
            cols["quality"].append(f.quality.score)
            cols["embedding"].append(f.embedding.astype(np.float16))
            cols["fallback"].append(fallback)
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["shape"] = np.asarray(shapes)
    out["paths"] = np.asarray([str(p) for p in images])
    return out


@dataclass(frozen=True)
class Rule:
    """A validity rule and the centrality prior's floor (``pipeline.CENTRE_FLOOR``)."""

    validity: FaceValidity | None
    centre_floor: float | None = None  # None: the served floor; with no validity: the protocol


def refused(rows: dict[str, np.ndarray], rule: FaceValidity | None) -> np.ndarray:
    """``check_validity`` vectorised over detections (``rows``: score, size, norm, second)."""
    if rule is None:
        return np.zeros(len(rows["score"]), dtype=bool)

    def band_refuses(band: ValidityBand) -> np.ndarray:
        out = (
            (rows["norm"] < band.max_norm)
            & (rows["score"] >= band.min_score)
            & (rows["second"] < band.max_agreement)
        )
        if band.sure_score is not None:
            out &= ~((rows["score"] >= band.sure_score) & (rows["norm"] >= band.sure_norm))
        return out

    large = rows["size"] >= rule.large_face_px
    return np.where(large, band_refuses(rule.large), band_refuses(rule.small))


def by_image(rows: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """Image -> the rows of its detections."""
    return {int(i): np.flatnonzero(rows["image"] == i) for i in np.unique(rows["image"])}


def _areas(rows: dict[str, np.ndarray]) -> np.ndarray:
    box = rows["box"]
    return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])


def choose(rows: dict[str, np.ndarray], rule: Rule) -> dict[int, int]:
    """Image -> the chosen detection's row (as ``choose_face``: the CHOICE_CANDIDATES largest,
    the refused dropped, then quality x sqrt(area / largest) x the pipeline's ``centrality``)."""
    area = _areas(rows)
    floor = CENTRE_FLOOR if rule.centre_floor is None else rule.centre_floor
    bad = refused(rows, rule.validity)
    chosen: dict[int, int] = {}
    for i, idx in by_image(rows).items():
        idx = idx[np.argsort(-area[idx], kind="stable")][:CHOICE_CANDIDATES]
        idx = idx[~bad[idx]]
        if len(idx):
            h, w = (int(v) for v in rows["shape"][i])
            centre = np.array([centrality(tuple(rows["box"][j]), w, h, floor) for j in idx])
            merit = rows["quality"][idx] * np.sqrt(area[idx] / area[idx].max()) * centre
            chosen[i] = int(idx[np.argmax(merit)])
    return chosen


def central(rows: dict[str, np.ndarray]) -> dict[int, int]:
    """Image -> its detection nearest the centre (the protocol's face: ``nearest_to_centre``)."""
    box = rows["box"]
    h, w = rows["shape"][rows["image"], 0], rows["shape"][rows["image"], 1]
    d2 = ((box[:, 0] + box[:, 2]) / 2 - w / 2) ** 2 + ((box[:, 1] + box[:, 3]) / 2 - h / 2) ** 2
    return {i: int(idx[np.argmin(d2[idx])]) for i, idx in by_image(rows).items()}


def largest(rows: dict[str, np.ndarray]) -> dict[int, int]:
    """Image -> its largest detection."""
    area = _areas(rows)
    return {i: int(idx[np.argmax(area[idx])]) for i, idx in by_image(rows).items()}


def detections(data: Path, folder: Path, dataset: str) -> dict[str, np.ndarray]:
    """Every detection of every photo of ``dataset`` (``lfw`` or ``celeba``), collected once
    into ``folder/<dataset>_faces.npz`` (minutes) and read from there afterwards."""
    cache = folder / f"{dataset}_faces.npz"
    if not cache.is_file():
        images = {
            "lfw": lambda: sorted((data / "lfw/images").glob("*/*.jpg")),
            "celeba": lambda: sorted((data / "celeba299/images").glob("*.jpg")),
        }[dataset]()
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, **collect(images, Settings(device="cpu")))  # type: ignore[arg-type]
    return dict(np.load(cache))


def replay(
    rows: dict[str, np.ndarray], rule: Rule, pairs: list[Any], index: dict[str, int]
) -> dict[str, Any]:
    """What ``rule`` chooses, against the protocol's face, and LFW accuracy with it."""
    protocol = central(rows)
    chosen = protocol if rule.validity is None and rule.centre_floor == -1 else choose(rows, rule)
    emb = rows["embedding"].astype(np.float32)

    def vec(p: Path) -> np.ndarray | None:
        i = index[str(p)]
        return emb[chosen[i]] if i in chosen else None

    scores = []
    for p in pairs:
        a, b = vec(p.a), vec(p.b)
        scores.append(-1.0 if a is None or b is None else float(a @ b))
    mean, std, _ = kfold_accuracy(
        np.asarray(scores), np.array([p.same for p in pairs]), np.array([p.fold for p in pairs])
    )
    used = {index[str(p.a)] for p in pairs} | {index[str(p.b)] for p in pairs}
    paths = rows["paths"]
    return {
        "lfw_kfold_accuracy": round(mean, 5),
        "lfw_kfold_std": round(std, 5),
        "images_without_face": sorted(Path(paths[i]).stem for i in used if i not in chosen),
        "images_not_central": sorted(
            Path(paths[i]).stem for i in used if i in chosen and chosen[i] != protocol[i]
        ),
    }


def celeba_truth(rows: dict[str, np.ndarray], labels: dict[str, str]) -> dict[int, int]:
    """CelebA-299 photo with several faces -> its labelled person's face, found by identity
    rather than by position: the face most similar to the person's mean embedding over their
    one-face photos, kept only where that is clear (cosine >= 0.3 and 0.1 above the next)."""
    emb = rows["embedding"].astype(np.float32)
    per_image = by_image(rows)
    ident = [labels.get(Path(p).name) for p in rows["paths"]]
    sums: dict[str, np.ndarray] = {}
    for i, idx in per_image.items():
        if len(idx) == 1 and ident[i] is not None:
            sums[ident[i]] = sums.get(ident[i], 0) + emb[idx[0]]  # type: ignore[operator]
    truth: dict[int, int] = {}
    for i, idx in per_image.items():
        person = ident[i]
        if len(idx) < 2 or person not in sums:
            continue
        centre = sums[person] / np.linalg.norm(sums[person])
        sims = np.sort(emb[idx] @ centre)[::-1]
        if sims[0] >= 0.3 and sims[0] - sims[1] >= 0.1:
            truth[i] = int(idx[np.argmax(emb[idx] @ centre)])
    return truth


def agreement_by_floor(
    rows: dict[str, np.ndarray], truth: dict[int, int], rule: FaceValidity | None
) -> dict[str, Any]:
    """How often the choice is the labelled person's face, for several centrality floors
    (``pipeline.CENTRE_FLOOR``), beside taking the largest or the central face."""
    out: dict[str, Any] = {"photos": len(truth)}
    for name, chosen in (("largest", largest(rows)), ("central", central(rows))):
        out[name] = sum(chosen.get(i) == t for i, t in truth.items())
    for floor in FLOORS:
        chosen = choose(rows, Rule(rule, floor))
        out[f"floor {floor}"] = sum(chosen.get(i) == t for i, t in truth.items())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--cache", default=str(ROOT / "runs" / "validity"), help="cache folder")
    parser.add_argument("--rules", help="JSON list of {validity, centre_floor} to replay too")
    args = parser.parse_args()
    data, folder = Path(args.data), Path(args.cache)
    settings = Settings(device="cpu")
    pairs = read_lfw_pairs(data / "lfw/pairs.txt", data / "lfw/images")
    rows = detections(data, folder, "lfw")
    index = {p: i for i, p in enumerate(rows["paths"])}
    manifest_rule = load_manifest(settings.models_dir / settings.embedder.model).validity
    report: dict[str, Any] = {
        "images": len(rows["paths"]),
        "detections": len(rows["score"]),
        "pairs": len(pairs),
        "protocol_central_face": replay(rows, Rule(None, -1), pairs, index),
        "manifest_rule": replay(rows, Rule(manifest_rule), pairs, index),
        "no_validity_rule": replay(rows, Rule(None), pairs, index),
    }
    for spec in json.loads(args.rules) if args.rules else []:
        validity = FaceValidity.model_validate(spec["validity"]) if spec.get("validity") else None
        rule = Rule(validity, spec.get("centre_floor"))
        report[json.dumps(spec, sort_keys=True)] = replay(rows, rule, pairs, index)
    lfw_truth = {i: j for i, j in central(rows).items() if (rows["image"] == i).sum() > 1}
    report["lfw_photos_with_several_faces_choice_is_central"] = agreement_by_floor(
        rows, lfw_truth, manifest_rule
    )
    celeba = detections(data, folder, "celeba")
    labels = {
        Path(r["path"]).name: r["identity"]
        for r in csv.DictReader((data / "celeba299/labels.csv").open())
    }
    report["celeba_photos_with_several_faces_choice_is_the_person"] = agreement_by_floor(
        celeba, celeba_truth(celeba, labels), manifest_rule
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
