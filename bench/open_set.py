"""Open-set identification on LFW and CelebA-299: how an identify answer should be decided.

Protocol (documented in docs/benchmarks.md, "Open-set identification on LFW"): every person
with two photos or more is enrolled with their first photo (``enrolled=1``), or with their
first ``min(5, photos - 1)`` photos (``enrolled=5``); their other photos are genuine probes;
strangers are every person with a single photo (LFW) or, on CelebA-299 where everyone has about
21 photos, a seeded half of the people, never enrolled, every photo of theirs a stranger probe
(two CelebA labels of one person are merged first: ``merge_duplicates``).
LFW: each photo's face nearest the centre, embedded once and cached by ``bench/cluster_faces.py``
(runs/cluster/marginface_lfw.npz); CelebA-299: the crops ``training.train prepare`` aligned
(data/celeba299_aligned), embedded here and cached (runs/cluster/marginface_celeba299_aligned.npz).

Rules, each a score per enrolled subject and a decision on the best subject:
- ``per_face`` (today's): the subject's best face; a match when it reaches the threshold.
- ``per_subject_mean``: the mean of the subject's faces (a fusion of its evidence).
- ``per_subject_top2``: the mean of the subject's two best faces.
- ``+ margin m``: the best subject must also beat the runner-up subject by m (else the answer
  is ``ambiguous``, not a match).
- ``+ negatives`` (one round of "not this person"): strangers (by person) and genuine probes are
  split into a feedback half and a test half (seeded); every feedback probe the per-face rule
  matches, at the service's default threshold, to a wrong subject S becomes a negative of S;
  on the test half a subject is vetoed when its negatives are at least as close as its best
  face (``veto``), against the same rule without negatives on the same test half.

Reported: DIR (rank-1 detection and identification rate: genuine probes matched to the right
subject) at FPIR 1e-2 and 1e-3 (the share of strangers matched to anyone; the threshold is
chosen on the strangers for each rule), and at the service's own default threshold (the
calibrated cosine for ``identify_far``) the DIR, the FPIR and the share answered ``ambiguous``.

Usage: nice -n 10 python bench/open_set.py [--sets lfw celeba299] [--margins 0 0.05]
(prints JSON)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster_faces import CACHE, load  # noqa: E402

CELEBA_ALIGNED = ROOT / "data" / "celeba299_aligned"

Fusion = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
FPIRS = (1e-2, 1e-3)
VETOED = np.float32(-2.0)  # below any cosine: a vetoed subject is never the answer


def load_celeba_aligned(folder: Path = CELEBA_ALIGNED, batch: int = 64) -> dict[str, np.ndarray]:
    """emb (n, d), labels (n), files (n) of the CelebA-299 crops that ``training.train prepare``
    aligned (``<identity>/<stem>.jpg``, 112x112, the main face of each photo), embedded by the
    service's recognizer (``FacePipeline.embed_crops``, ``batch`` crops a call); cached in
    runs/cluster/marginface_celeba299_aligned.npz with the seconds it took."""
    path = CACHE / "marginface_celeba299_aligned.npz"
    if path.is_file():
        return dict(np.load(path))
    from service.recognition import build_pipeline
    from service.settings import Settings
    from service.vision.image import decode_image

    files = sorted(f.relative_to(folder).as_posix() for f in folder.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no crops under {folder}: run `python -m training.train prepare` first")
    pipeline = build_pipeline(Settings(device="cpu"), batching=False)
    started, cpu = time.perf_counter(), time.process_time()
    parts = []
    for at in range(0, len(files), batch):
        crops = [decode_image((folder / f).read_bytes()) for f in files[at : at + batch]]
        parts.append(pipeline.embed_crops(crops))
    out = {
        "emb": np.concatenate(parts).astype(np.float32),
        "labels": np.array([f.split("/")[0] for f in files]),
        "files": np.array(files),
        "model": np.array(pipeline.model_id),
        "seconds": np.array(time.perf_counter() - started),
        "cpu_seconds": np.array(time.process_time() - cpu),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)  # type: ignore[arg-type]  # numpy stubs take **out for allow_pickle
    return out


def merge_duplicates(
    labels: np.ndarray, emb: np.ndarray, min_centroid_cosine: float = 0.9
) -> tuple[np.ndarray, dict[str, str]]:
    """(labels, {merged label: label kept}): identities whose mean embeddings are at least
    ``min_centroid_cosine`` close are one person under two labels, relabelled to the first
    label. CelebA-299 has one such pair, 7392 and 7393, at 0.982 (their photos' median cosine to
    each other, 0.653, is above one person's own median, 0.594); the next pair is at 0.735 with
    a median photo cosine of 0.219: lookalikes, kept apart. Without this a "stranger" who is in
    fact enrolled sets the FPIR threshold whenever the seeded half splits the pair."""
    people = np.unique(labels)
    centroids = np.stack([emb[labels == p].mean(axis=0) for p in people])  # (people, D)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    close = np.triu(centroids @ centroids.T >= min_centroid_cosine, k=1)
    merged: dict[str, str] = {}
    for a, b in zip(*np.nonzero(close), strict=True):
        keep = merged.get(str(people[a]), str(people[a]))
        merged[str(people[b])] = keep
    out = labels.copy()
    for gone, keep in merged.items():
        out[labels == gone] = keep
    return out, merged


def split(
    labels: np.ndarray, files: np.ndarray, enrolled: int, strangers: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gallery rows, their subject numbers, genuine probe rows, stranger rows).

    A person is a stranger (every photo a probe) when in ``strangers`` or with a single photo;
    the others are enrolled with their first ``min(enrolled, photos - 1)`` photos by file name.
    """
    held_out = set() if strangers is None else set(strangers.tolist())
    order = np.lexsort((files, labels))
    people, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    gallery: list[int] = []
    owner: list[int] = []
    genuine: list[int] = []
    stranger_rows: list[int] = []
    subject = 0
    for person, s, n in zip(people, start, count, strict=True):
        rows = order[s : s + n]
        if n == 1 or person in held_out:
            stranger_rows.extend(rows)
            continue
        k = min(enrolled, n - 1)
        gallery.extend(rows[:k])
        owner.extend([subject] * k)
        genuine.extend(rows[k:])
        subject += 1
    return (
        np.array(gallery, dtype=np.int64),
        np.array(owner, dtype=np.int64),
        np.array(genuine, dtype=np.int64),
        np.array(stranger_rows, dtype=np.int64),
    )


def held_out_people(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded half (rounded down) of the people: never enrolled, the strangers of a set where
    everyone has several photos."""
    people = np.unique(labels)
    return np.sort(np.random.default_rng(seed).permutation(people)[: people.size // 2])


def halves(
    genuine_subject: np.ndarray,
    stranger_labels: np.ndarray,
    seed: int,
    *,
    strangers_by_person: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(feedback genuine, test genuine, feedback strangers, test strangers): positions in the
    genuine and stranger probe arrays. Genuine probes are split photo by photo (a person's
    other photos are what a remembered "not this person" should help); strangers person by
    person (a stranger of the test half was never seen in feedback), or, with
    ``strangers_by_person=False``, photo by photo (the same stranger comes back)."""
    rng = np.random.default_rng(seed)
    g = rng.permutation(genuine_subject.size)
    if strangers_by_person:
        people = rng.permutation(np.unique(stranger_labels))
        seen = np.isin(stranger_labels, people[: people.size // 2])
    else:
        seen = np.zeros(stranger_labels.size, dtype=bool)
        seen[rng.permutation(stranger_labels.size)[: stranger_labels.size // 2]] = True
    return (
        np.sort(g[: g.size // 2]),
        np.sort(g[g.size // 2 :]),
        np.flatnonzero(seen),
        np.flatnonzero(~seen),
    )


def fuse_max(scores: np.ndarray, owner: np.ndarray, subjects: int) -> np.ndarray:
    """(probes, subjects): each subject's best face."""
    out = np.full((scores.shape[0], subjects), -2.0, dtype=np.float32)
    np.maximum.at(out.T, owner, scores.T)
    return out


def fuse_mean(scores: np.ndarray, owner: np.ndarray, subjects: int) -> np.ndarray:
    """(probes, subjects): the mean of each subject's faces."""
    sums = np.zeros((subjects, scores.shape[0]), dtype=np.float64)
    np.add.at(sums, owner, scores.T)
    return (sums / np.bincount(owner, minlength=subjects)[:, None]).T.astype(np.float32)


def fuse_top2(scores: np.ndarray, owner: np.ndarray, subjects: int) -> np.ndarray:
    """(probes, subjects): the mean of each subject's two best faces (one face: that face)."""
    best = fuse_max(scores, owner, subjects)
    masked = scores.copy()
    # remove each subject's best face once, then take the best of the rest
    first = np.zeros_like(masked, dtype=bool)
    for s in range(subjects):
        cols = np.flatnonzero(owner == s)
        if cols.size > 1:
            first[np.arange(scores.shape[0]), cols[np.argmax(scores[:, cols], axis=1)]] = True
    masked[first] = -2.0
    second = fuse_max(masked, owner, subjects)
    single = np.bincount(owner, minlength=subjects) == 1
    second[:, single] = best[:, single]
    return (best + second) / 2


FUSIONS: dict[str, Fusion] = {
    "per_face": fuse_max,
    "per_subject_mean": fuse_mean,
    "per_subject_top2": fuse_top2,
}


def top_two(subject_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best subject, its score, the runner-up's score) per probe."""
    part = np.argpartition(-subject_scores, 1, axis=1)[:, :2]
    two = np.take_along_axis(subject_scores, part, axis=1)
    swap = two[:, 1] > two[:, 0]
    best = np.where(swap, part[:, 1], part[:, 0])
    return best, two.max(axis=1), two.min(axis=1)


def threshold_at(stranger_best: np.ndarray, passes: np.ndarray, fpir: float) -> float:
    """The lowest threshold that accepts at most ``fpir`` of the strangers."""
    allowed = int(np.floor(fpir * stranger_best.size))
    accepted = np.sort(stranger_best[passes])[::-1]
    if accepted.size <= allowed:
        return -1.0
    return float(np.nextafter(accepted[allowed], np.float32(2.0)))


def veto(subject_scores: np.ndarray, negative_scores: np.ndarray, delta: float = 0.0) -> np.ndarray:
    """(probes, subjects) scores with every vetoed subject dropped (set to ``VETOED``).

    The service's "not this person" rule (issue 30; ``service/identification.py``): for a probe
    and a subject S with best-face cosine s and max cosine n to S's negatives, S is vetoed when
    n >= s; the answer then falls to the next subject, or unknown. ``delta`` d is a variant
    measured beside it (vetoed when n >= s + d); 0 is the shipped rule. ``negative_scores`` is
    ``fuse_max`` of the probes against the negatives (below -1 for a subject without any).
    """
    return np.where(negative_scores >= subject_scores + delta, VETOED, subject_scores)


def wrong_matches(
    subject_scores: np.ndarray, truth: np.ndarray, threshold: float, margin: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(probe positions, the subject each was wrongly matched to): what one round of "not this
    person" feedback marks. ``truth`` is each probe's subject, -1 for a stranger."""
    best, s1, s2 = top_two(subject_scores)
    wrong = (s1 >= threshold) & (s1 - s2 >= margin) & (best != truth)
    return np.flatnonzero(wrong), best[wrong]


def measure(
    genuine_scores: np.ndarray,
    genuine_subject: np.ndarray,
    stranger_scores: np.ndarray,
    margin: float,
    service_threshold: float,
) -> dict[str, float]:
    """DIR at each FPIR (threshold chosen on these strangers) and DIR, FPIR, ambiguous and wrong
    matches at the service's threshold, for (probes, subjects) scores and one margin."""
    g_best, g_s1, g_s2 = top_two(genuine_scores)
    _, s_s1, s_s2 = top_two(stranger_scores)
    right = g_best == genuine_subject
    g_ok, s_ok = (g_s1 - g_s2) >= margin, (s_s1 - s_s2) >= margin
    row: dict[str, float] = {}
    for fpir in FPIRS:
        t = threshold_at(s_s1, s_ok, fpir)
        row[f"dir_at_fpir_{fpir:g}"] = round(float((right & g_ok & (g_s1 >= t)).mean()), 4)
        row[f"threshold_at_fpir_{fpir:g}"] = round(t, 4)
        row[f"strangers_allowed_at_fpir_{fpir:g}"] = int(np.floor(fpir * s_s1.size))
    t = service_threshold
    row["service_threshold"] = round(t, 4)
    row["dir_at_service_threshold"] = round(float((right & g_ok & (g_s1 >= t)).mean()), 4)
    row["fpir_at_service_threshold"] = round(float((s_ok & (s_s1 >= t)).mean()), 5)
    row["genuine_ambiguous_at_service_threshold"] = round(float(((g_s1 >= t) & ~g_ok).mean()), 4)
    row["genuine_wrong_match_at_service_threshold"] = round(
        float((~right & g_ok & (g_s1 >= t)).mean()), 4
    )
    return row


def evaluate(
    emb: np.ndarray,
    labels: np.ndarray,
    files: np.ndarray,
    enrolled: int,
    margins: list[float],
    service_threshold: float,
    strangers: np.ndarray | None = None,
) -> dict[str, object]:
    """Every rule and margin for one enrollment variant."""
    gallery, owner, genuine, stranger_rows = split(labels, files, enrolled, strangers)
    subjects = int(owner.max()) + 1
    truth = {labels[g]: o for g, o in zip(gallery, owner, strict=True)}
    genuine_subject = np.array([truth[labels[p]] for p in genuine])
    out: dict[str, object] = {
        "subjects": subjects,
        "gallery_faces": int(gallery.size),
        "genuine_probes": int(genuine.size),
        "stranger_probes": int(stranger_rows.size),
        "stranger_people": int(np.unique(labels[stranger_rows]).size),
        "rules": {},
    }
    g = emb[gallery]
    for rule, fuse in FUSIONS.items():
        if enrolled == 1 and rule != "per_face":
            continue  # one face per subject: every fusion is the face itself
        g_scores = fuse(emb[genuine] @ g.T, owner, subjects)
        s_scores = fuse(emb[stranger_rows] @ g.T, owner, subjects)
        out["rules"][rule] = {  # type: ignore[index]
            f"margin_{m:g}": measure(g_scores, genuine_subject, s_scores, m, service_threshold)
            for m in margins
        }
    return out


def with_negatives(
    emb: np.ndarray,
    labels: np.ndarray,
    files: np.ndarray,
    enrolled: int,
    service_threshold: float,
    deltas: list[float],
    seed: int,
    strangers: np.ndarray | None = None,
    *,
    strangers_by_person: bool = True,
) -> dict[str, object]:
    """One round of "not this person" on a feedback half, measured on the test half: the
    per-face rule (margin 0) without negatives, with the shipped veto (n >= s), and with each
    variant n >= s + d."""
    gallery, owner, genuine, stranger_rows = split(labels, files, enrolled, strangers)
    subjects = int(owner.max()) + 1
    truth = {labels[g]: o for g, o in zip(gallery, owner, strict=True)}
    genuine_subject = np.array([truth[labels[p]] for p in genuine])
    fb_g, te_g, fb_s, te_s = halves(
        genuine_subject, labels[stranger_rows], seed, strangers_by_person=strangers_by_person
    )
    g = emb[gallery]
    feedback = np.concatenate([genuine[fb_g], stranger_rows[fb_s]])
    feedback_truth = np.concatenate([genuine_subject[fb_g], np.full(fb_s.size, -1)])
    marked, negative_owner = wrong_matches(
        fuse_max(emb[feedback] @ g.T, owner, subjects), feedback_truth, service_threshold
    )
    negatives = emb[feedback[marked]]
    test_g, test_s = genuine[te_g], stranger_rows[te_s]
    g_scores = fuse_max(emb[test_g] @ g.T, owner, subjects)
    s_scores = fuse_max(emb[test_s] @ g.T, owner, subjects)
    g_neg = fuse_max(emb[test_g] @ negatives.T, negative_owner, subjects)
    s_neg = fuse_max(emb[test_s] @ negatives.T, negative_owner, subjects)
    test_subject = genuine_subject[te_g]
    rows = {"without_negatives": measure(g_scores, test_subject, s_scores, 0.0, service_threshold)}
    for d in [0.0, *[d for d in deltas if d != 0.0]]:
        vetoed = veto(g_scores, g_neg, d)
        row = measure(vetoed, test_subject, veto(s_scores, s_neg, d), 0.0, service_threshold)
        own = vetoed[np.arange(test_subject.size), test_subject] == VETOED
        row["genuine_own_subject_vetoed"] = round(float(own.mean()), 4)
        rows["veto_n_ge_s" if d == 0.0 else f"veto_n_ge_s_plus_{d:g}"] = row
    return {
        "seed": seed,
        "strangers_split": "by person" if strangers_by_person else "by photo",
        "subjects": subjects,
        "feedback_genuine_probes": int(fb_g.size),
        "feedback_stranger_probes": int(fb_s.size),
        "feedback_stranger_people": int(np.unique(labels[stranger_rows[fb_s]]).size),
        "negatives": int(marked.size),
        "negatives_from_strangers": int((feedback_truth[marked] == -1).sum()),
        "subjects_with_negatives": int(np.unique(negative_owner).size),
        "test_genuine_probes": int(te_g.size),
        "test_stranger_probes": int(te_s.size),
        "test_stranger_people": int(np.unique(labels[test_s]).size),
        "rules": rows,
    }


def headline(row: dict[str, float]) -> dict[str, float]:
    """The figures a seed-to-seed comparison needs from one ``measure`` row."""
    keys = [f"dir_at_fpir_{f:g}" for f in FPIRS]
    keys += ["dir_at_service_threshold", "fpir_at_service_threshold"]
    return {k: row[k] for k in keys}


def run_set(name: str, args: argparse.Namespace, service_threshold: float) -> dict[str, object]:
    """Every rule, margin and the negatives round on one set; other seeds summarised."""
    if name == "lfw":
        d = load("lfw")
        about = "LFW, the face nearest the centre of each photo (bench/cluster_faces.py)"
    else:
        d = load_celeba_aligned()
        about = "CelebA-299, the main face of each photo aligned by `training.train prepare`"
    emb, labels, files = d["emb"].astype(np.float32), d["labels"], d["files"]
    merged: dict[str, str] = {}
    if name != "lfw":  # LFW's single-photo strangers have no centroid to compare
        labels, merged = merge_duplicates(labels, emb)

    def strangers(seed: int) -> np.ndarray | None:
        return None if name == "lfw" else held_out_people(labels, seed)

    first, *others = args.seeds
    out: dict[str, object] = {
        "data": about,
        "faces": int(emb.shape[0]),
        "people": int(np.unique(labels).size),
        "merged_as_one_person": merged,
        "strangers": "people with one photo"
        if name == "lfw"
        else f"a seeded half of the people (seed {first}), never enrolled",
        "embedding_seconds": round(float(d["seconds"]), 1),
        "variants": {
            f"enrolled_{k}": evaluate(
                emb, labels, files, k, args.margins, service_threshold, strangers(first)
            )
            for k in args.enrolled
        },
        "negatives": {
            f"enrolled_{k}": with_negatives(
                emb, labels, files, k, service_threshold, args.deltas, first, strangers(first)
            )
            for k in args.enrolled
        },
    }
    if name != "lfw":  # the same stranger comes back (LFW's strangers have one photo each)
        out["negatives_recurring_strangers"] = {
            f"enrolled_{k}": with_negatives(
                emb,
                labels,
                files,
                k,
                service_threshold,
                args.deltas,
                first,
                strangers(first),
                strangers_by_person=False,
            )
            for k in args.enrolled
        }
    summary: dict[str, object] = {}
    for seed in others:
        per_seed: dict[str, object] = {}
        for k in args.enrolled:
            neg = with_negatives(
                emb, labels, files, k, service_threshold, args.deltas, seed, strangers(seed)
            )
            rows = {
                f"negatives_{r}": headline(v)
                for r, v in neg["rules"].items()  # type: ignore[attr-defined]
            }
            if name != "lfw":  # LFW's strangers do not depend on the seed
                base = evaluate(
                    emb, labels, files, k, [0.0, 0.05], service_threshold, strangers(seed)
                )
                for rule, by_margin in base["rules"].items():  # type: ignore[attr-defined]
                    for m, row in by_margin.items():
                        rows[f"all_probes_{rule}_{m}"] = headline(row)
                recurring = with_negatives(
                    emb,
                    labels,
                    files,
                    k,
                    service_threshold,
                    args.deltas,
                    seed,
                    strangers(seed),
                    strangers_by_person=False,
                )
                for r, v in recurring["rules"].items():  # type: ignore[attr-defined]
                    rows[f"recurring_strangers_{r}"] = headline(v)
            per_seed[f"enrolled_{k}"] = rows
        summary[f"seed_{seed}"] = per_seed
    out["other_seeds"] = summary
    return out


def main() -> None:
    """Run the protocol and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=["lfw", "celeba299"])
    parser.add_argument("--margins", type=float, nargs="*", default=[0.0, 0.02, 0.05, 0.08, 0.1])
    parser.add_argument("--enrolled", type=int, nargs="*", default=[1, 5])
    parser.add_argument(
        "--deltas",
        type=float,
        nargs="*",
        default=[-0.1, -0.05, 0.05, 0.1],
        help="veto variants n >= s + d measured beside the shipped n >= s",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[0, 1, 2, 3, 4],
        help="the first gives the tables; the others a summary (the splits they change)",
    )
    parser.add_argument("--identify-far", type=float, default=None, help="default: the setting")
    args = parser.parse_args()
    from service.calibration import threshold_for_far
    from service.models import resolve_model
    from service.settings import Settings

    settings = Settings(device="cpu")
    far = args.identify_far if args.identify_far is not None else settings.identify_far
    if far is None:
        raise SystemExit("the identify FAR is unset (best-accuracy threshold): pass --identify-far")
    manifest, _ = resolve_model(settings.models_dir, settings.embedder.model)
    service_threshold, used_far = threshold_for_far(manifest.calibration, far)
    started, cpu = time.perf_counter(), time.process_time()
    sets = {name: run_set(name, args, service_threshold) for name in args.sets}
    result = {
        "model": manifest.name,
        "identify_far": used_far,
        "service_threshold": round(service_threshold, 4),
        "sets": sets,
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
