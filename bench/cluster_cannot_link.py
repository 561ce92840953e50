"""What the cannot-link rule (faces of one photo are never one cluster) changes on all of LFW.

The LFW cache (``bench/cluster_faces.py``) holds only each photo's central face, so no photo
gives two faces and the rule never applies. Here every photo is run through the service's
detector (detection only, cached under ``runs/cluster/lfw_detections/``); the faces other than
the central one are embedded and kept as ``marginface cluster`` keeps them (valid faces at or
above ``min_quality``: ``service.clustering.faces.faces_of`` with ``which="all"``), and the
central faces come from the cache, matched by file (the same detector, the same face: the one
nearest the centre, as ``service.calibration.central_face`` picks it). All faces (central +
extra) are clustered as the CLI and the job do (``edge_threshold`` at the automatic FAR for the
number of faces, then ``cluster_faces``; also at the looser FARs that ``--far`` gives and that a
smaller library gets automatically), once as shipped and once with the rule off: each
face gets a file of its own (``apart``), the only thing the rule reads, so everything else is
the same code path. Scores (BCubed and pairwise, ``service.clustering.scores``) are on the
labelled (central) faces; the extra faces are unlabelled (bystanders, other people in the
photo) and are reported by how they fall: how many share a cluster with a face of their own
photo (impossible with the rule), and how many clusters differ between the two runs.

Usage: nice -n 10 python bench/cluster_cannot_link.py [--processes 2] >
    docs/cluster_cannot_link.json   (stages cached under runs/cluster/; a rerun only clusters)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster_faces import CACHE, SETS, load  # noqa: E402

DETECTIONS = CACHE / "lfw_detections"
EXTRA = CACHE / "lfw_extra_faces.npz"
CHUNK = 500

_PIPELINE: Any = None


# ---- pure helpers (tests/bench/test_cluster_cannot_link.py) ----


def apart(files: list[str]) -> list[str]:
    """One distinct file name per face: ``cluster_faces`` then sees no two faces of one photo,
    which turns the cannot-link rule off without a switch in the service."""
    return [f"{f}#{i}" for i, f in enumerate(files)]


def with_own_photo(labels: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """Per face: whether its cluster holds another face of its own photo (``photo``: one id
    per face). A face alone (a label of its own) never does."""
    labels, photo = np.asarray(labels), np.asarray(photo)
    if labels.size == 0:
        return np.zeros(0, bool)
    _, cell, counts = np.unique(
        np.stack([labels, photo], axis=1), axis=0, return_inverse=True, return_counts=True
    )
    return np.asarray(counts[cell.reshape(-1)] > 1)


def clusters_of(labels: np.ndarray) -> set[frozenset[int]]:
    """The clusters of two or more faces, as sets of face numbers."""
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(np.asarray(labels).tolist()):
        groups.setdefault(label, []).append(i)
    return {frozenset(m) for m in groups.values() if len(m) > 1}


def changed(before: np.ndarray, after: np.ndarray) -> dict[str, int]:
    """How two clusterings of the same faces differ: clusters (of two or more) found in only
    one of them, and faces whose cluster (as a set of faces) is not the same."""
    a, b = clusters_of(before), clusters_of(after)
    same = a & b
    unchanged_faces = sum(len(c) for c in same)
    in_a = sum(len(c) for c in a)
    in_b = sum(len(c) for c in b)
    return {
        "clusters_before_only": len(a - b),
        "clusters_after_only": len(b - a),
        "clusters_unchanged": len(same),
        "faces_in_changed_clusters": max(in_a, in_b) - unchanged_faces,
    }


def central_row(boxes: np.ndarray, width: int, height: int) -> int:
    """The row of the box nearest the image centre (``nearest_to_centre``'s rule), -1 if none."""
    if len(boxes) == 0:
        return -1
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    return int(np.argmin(np.linalg.norm(centres - np.array([width / 2, height / 2]), axis=1)))


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2): near 1 is one face found twice."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


# ---- detection (cached) ----


def _start(intra_op_threads: int) -> None:
    global _PIPELINE
    from service.recognition import build_pipeline
    from service.settings import Settings

    settings = Settings(device="cpu", intra_op_threads=intra_op_threads)
    _PIPELINE = build_pipeline(settings, batching=False)


def _decode(path: Path) -> np.ndarray:
    from service.settings import Settings
    from service.vision.image import decode_image

    return decode_image(path.read_bytes(), max_pixels=Settings().limits.max_image_pixels)


def _detect(path: Path) -> dict[str, Any]:
    image = _decode(path)
    found = _PIPELINE.detect(image)
    return {
        "boxes": np.array([d.box for d in found], np.float32).reshape(-1, 4),
        "landmarks": np.array([d.landmarks for d in found], np.float32).reshape(-1, 5, 2),
        "scores": np.array([d.score for d in found], np.float32),
        "size": (image.shape[1], image.shape[0]),
    }


def photos() -> list[str]:
    """LFW's photos, relative to its images folder, sorted (the cache's names)."""
    root = SETS["lfw"]
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))


def detect_all(processes: int) -> dict[str, Any]:
    """Every photo's detections (default detector options, as ``marginface cluster``), in
    chunks of CHUNK photos cached under DETECTIONS (a rerun resumes)."""
    from multiprocessing import get_context

    files = photos()
    DETECTIONS.mkdir(parents=True, exist_ok=True)
    chunks = [files[i : i + CHUNK] for i in range(0, len(files), CHUNK)]
    ctx = get_context("spawn")
    with ctx.Pool(processes, initializer=_start, initargs=(1,)) as pool:
        for n, chunk in enumerate(chunks):
            path = DETECTIONS / f"chunk_{n:03d}.npz"
            if path.is_file():
                continue
            t0 = time.perf_counter()
            results = pool.map(_detect, [SETS["lfw"] / f for f in chunk], chunksize=8)
            counts = np.array([len(r["scores"]) for r in results])
            np.savez(
                path,
                files=np.array(chunk),
                counts=counts,
                sizes=np.array([r["size"] for r in results]),
                boxes=np.concatenate([r["boxes"] for r in results]),
                landmarks=np.concatenate([r["landmarks"] for r in results]),
                scores=np.concatenate([r["scores"] for r in results]),
                wall_seconds=np.array(time.perf_counter() - t0),
            )
            print(
                f"chunk {n + 1}/{len(chunks)}: {int(counts.sum())} faces in {len(chunk)} photos, "
                f"{time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    parts = [dict(np.load(DETECTIONS / f"chunk_{n:03d}.npz")) for n in range(len(chunks))]
    return {
        "files": np.concatenate([p["files"] for p in parts]),
        "counts": np.concatenate([p["counts"] for p in parts]),
        "sizes": np.concatenate([p["sizes"] for p in parts]),
        "boxes": np.concatenate([p["boxes"] for p in parts]),
        "landmarks": np.concatenate([p["landmarks"] for p in parts]),
        "scores": np.concatenate([p["scores"] for p in parts]),
        "wall_seconds": float(sum(float(p["wall_seconds"]) for p in parts)),
    }


def _embed_photo(item: tuple[str, np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """All detections of one photo embedded in one batch, with quality and validity: what
    ``pipeline.analyze`` computes before it drops the invalid ones."""
    from service.vision.detection import DetectedFace

    name, boxes, landmarks, scores = item
    image = _decode(SETS["lfw"] / name)
    dets = [
        DetectedFace((float(b[0]), float(b[1]), float(b[2]), float(b[3])), lm, float(s))
        for b, lm, s in zip(boxes, landmarks, scores, strict=True)
    ]
    faces = _PIPELINE.embed_detections(image, dets)
    return {
        "emb": np.stack([f.embedding for f in faces]).astype(np.float32),
        "quality": np.array([f.quality.score if f.quality else 1.0 for f in faces], np.float32),
        "valid": np.array([f.quality is None or f.quality.valid for f in faces]),
    }


def embed_several(det: dict[str, Any], processes: int) -> dict[str, Any]:
    """Embeddings, quality and validity of every detection of the photos with two or more
    (cached in EXTRA): the only photos where the cannot-link rule can apply."""
    if EXTRA.is_file():
        return dict(np.load(EXTRA))
    from multiprocessing import get_context

    start = np.concatenate([[0], np.cumsum(det["counts"])])
    several = np.flatnonzero(det["counts"] > 1)
    items = [
        (
            str(det["files"][i]),
            det["boxes"][start[i] : start[i + 1]],
            det["landmarks"][start[i] : start[i + 1]],
            det["scores"][start[i] : start[i + 1]],
        )
        for i in several
    ]
    t0 = time.perf_counter()
    with get_context("spawn").Pool(processes, initializer=_start, initargs=(1,)) as pool:
        results = pool.map(_embed_photo, items, chunksize=8)
    out = {
        "photo": np.repeat(several, det["counts"][several]),
        "row": np.concatenate([np.arange(c) for c in det["counts"][several]]),
        "emb": np.concatenate([r["emb"] for r in results]),
        "quality": np.concatenate([r["quality"] for r in results]),
        "valid": np.concatenate([r["valid"] for r in results]),
        "wall_seconds": np.array(time.perf_counter() - t0),
    }
    np.savez(EXTRA, **out)  # type: ignore[arg-type]  # numpy stubs: **kwds vs allow_pickle
    return out


def assemble(det: dict[str, Any], several: dict[str, Any]) -> dict[str, Any]:
    """Every face to cluster, in photo order: each photo's central face (the cache's embedding,
    labelled) and the other faces ``marginface cluster`` keeps (valid, quality at or above
    ``min_quality``), with what was dropped and how well the cache matches."""
    from service.settings import Settings

    cache = load("lfw")
    by_file = {str(f): i for i, f in enumerate(cache["files"])}
    min_quality = Settings().min_quality
    start = np.concatenate([[0], np.cumsum(det["counts"])])
    central = np.array(
        [
            central_row(det["boxes"][start[i] : start[i + 1]], *det["sizes"][i])
            for i in range(len(det["files"]))
        ]
    )
    rows_of: dict[int, list[int]] = {}
    for k, p in enumerate(several["photo"].tolist()):
        rows_of.setdefault(p, []).append(k)
    files: list[str] = []
    emb: list[np.ndarray] = []
    label: list[str] = []
    boxes: list[tuple[float, ...]] = []
    labelled: list[int] = []
    cosines: list[float] = []
    dropped = {"invalid": 0, "low_quality": 0, "central_invalid_or_low_quality": 0}

    def add(name: str, vector: np.ndarray, person: str, box: tuple[float, ...]) -> None:
        files.append(name)
        emb.append(vector)
        label.append(person)
        boxes.append(box)

    for i, name in enumerate(det["files"].tolist()):
        c = by_file[name]
        if i not in rows_of:  # one face (or none by default: the cache's came from the fallback)
            labelled.append(len(files))
            add(name, cache["emb"][c], str(cache["labels"][c]), ())
            continue
        for k in rows_of[i]:
            row = int(several["row"][k])
            box = tuple(det["boxes"][start[i] + row].tolist())
            if row == central[i]:
                cosines.append(float(several["emb"][k] @ cache["emb"][c]))
                if not several["valid"][k] or several["quality"][k] < min_quality:
                    dropped["central_invalid_or_low_quality"] += 1  # labelled: kept anyway
                labelled.append(len(files))
                add(name, cache["emb"][c], str(cache["labels"][c]), box)
            elif not several["valid"][k]:
                dropped["invalid"] += 1
            elif several["quality"][k] < min_quality:
                dropped["low_quality"] += 1
            else:
                add(name, several["emb"][k], "", box)
    return {
        "files": files,
        "emb": np.stack(emb).astype(np.float32),
        "labels": np.array(label),
        "labelled": np.array(labelled),
        "boxes": boxes,
        "dropped": dropped,
        "cosine_to_cache": cosines,
        "min_quality": min_quality,
    }


def cluster(
    faces: dict[str, Any], files: list[str], far: float | None = None, seed: int = 0
) -> tuple[Any, float, float]:
    """The service's clustering as ``marginface cluster`` and the job run it (``far`` None: the
    automatic FAR for the number of faces; else as ``--far``); (result, wall s, CPU s)."""
    from service.clustering import FoundFace, cluster_faces, edge_threshold
    from service.models import load_manifest

    calibration = load_manifest(ROOT / "models" / "sface-2021dec").calibration
    found = [
        FoundFace(f, (0.0, 0.0, 0.0, 0.0), 1.0, v) for f, v in zip(files, faces["emb"], strict=True)
    ]
    t0, c0 = time.perf_counter(), time.process_time()
    threshold, used = edge_threshold(calibration, far, len(found))
    result = cluster_faces(found, threshold=threshold, far=used, seed=seed)
    return result, time.perf_counter() - t0, time.process_time() - c0


def report(faces: dict[str, Any], result: Any, wall: float, cpu: float) -> dict[str, Any]:
    """Scores on the labelled faces, and how the faces of one photo fall."""
    from service.clustering import score_clustering

    labels = result.labels
    _, photo = np.unique(faces["files"], return_inverse=True)
    extra = np.ones(len(labels), bool)
    extra[faces["labelled"]] = False
    crowded = with_own_photo(labels, photo)
    sizes = np.bincount(labels)
    return {
        "threshold": round(result.threshold, 6),
        "far": result.far,
        "edges": result.edges,
        "clusters": len(result.clusters),
        "alone": len(result.alone),
        "labelled": score_clustering(
            labels[faces["labelled"]], faces["labels"][faces["labelled"]]
        ).to_dict(),
        "faces_with_a_face_of_their_photo": int(crowded.sum()),
        "extra_faces_with_a_face_of_their_photo": int((crowded & extra).sum()),
        "labelled_faces_with_a_face_of_their_photo": int((crowded & ~extra).sum()),
        "clusters_with_two_faces_of_one_photo": int(np.unique(labels[crowded]).size),
        "extra_faces_in_a_cluster": int((extra & (sizes[labels] > 1)).sum()),
        "extra_faces_alone": int((extra & (sizes[labels] == 1)).sum()),
        "same_photo_in_one_cluster": crowded_detail(faces, labels, crowded)[:10],
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
    }


def crowded_detail(
    faces: dict[str, Any], labels: np.ndarray, crowded: np.ndarray
) -> list[dict[str, Any]]:
    """Each photo with two faces in one cluster: the cluster's size and people, and the overlap
    of those faces' boxes (near 1: one face detected twice; near 0: two people)."""
    out = []
    seen: set[tuple[int, str]] = set()
    for i in np.flatnonzero(crowded).tolist():
        key = (int(labels[i]), faces["files"][i])
        if key in seen:
            continue
        seen.add(key)
        members = np.flatnonzero(labels == labels[i])
        mine = [m for m in members.tolist() if faces["files"][m] == key[1]]
        people = sorted({str(faces["labels"][m]) for m in members} - {""})
        out.append(
            {
                "file": key[1],
                "cluster_size": int(members.size),
                "people_in_cluster": len(people),
                "some_of_them": people[:5],
                "faces_of_this_photo": len(mine),
                "labelled_among_them": int(sum(faces["labels"][m] != "" for m in mine)),
                "box_iou": round(iou(faces["boxes"][mine[0]], faces["boxes"][mine[1]]), 3),
            }
        )
    return out


def photo_story(faces: dict[str, Any], labels: np.ndarray, name: str) -> list[dict[str, Any]]:
    """Where each face of one photo went: its cluster's size and whom it holds."""
    out = []
    for i in [k for k, f in enumerate(faces["files"]) if f == name]:
        members = np.flatnonzero(labels == labels[i])
        people = sorted({str(faces["labels"][m]) for m in members} - {""})
        out.append(
            {
                "face": i,
                "people_in_cluster": len(people),
                "labelled": bool(faces["labels"][i] != ""),
                "cluster_size": int(members.size),
                "some_of_them": people[:5],
                "unlabelled_in_cluster": int((faces["labels"][members] == "").sum()),
                "faces_of_this_photo_in_cluster": int(
                    sum(faces["files"][m] == name for m in members)
                ),
            }
        )
    return out


def main() -> None:
    """Stage by stage; each stage's output is cached."""
    import resource

    from service.clustering import score_clustering

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--detect-only", action="store_true")
    parser.add_argument("--photo", default="Vladimir_Putin/Vladimir_Putin_0007.jpg")
    parser.add_argument("--seeds", type=int, default=5, help="seeds at the automatic FAR")
    parser.add_argument(
        "--fars",
        nargs="*",
        default=["auto", "1e-5", "1e-4", "1e-3"],
        help="edge FARs: 'auto' (the default of the CLI and the job) and as --far gives them",
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    det = detect_all(args.processes)
    if args.detect_only:
        print(json.dumps({"photos": len(det["files"]), "detections": int(det["counts"].sum())}))
        return
    several = embed_several(det, args.processes)
    faces = assemble(det, several)
    files = faces["files"]
    labelled = faces["labelled"]
    central_only = {
        "files": [files[i] for i in labelled],
        "emb": faces["emb"][labelled],
        "labels": faces["labels"][labelled],
        "labelled": np.arange(len(labelled)),
    }
    base, bw, bc = cluster(central_only, central_only["files"])
    by_far = []
    for asked in args.fars:
        far = None if asked == "auto" else float(asked)
        on, w1, c1 = cluster(faces, files, far)
        off, w0, c0 = cluster(faces, apart(files), far)
        by_far.append(
            {
                "far_asked": asked,
                "rule_on": report(faces, on, w1, c1),
                "rule_off": report(faces, off, w0, c0),
                "changes_off_to_on": changed(off.labels, on.labels),
                "photo": {
                    "file": args.photo,
                    "rule_on": photo_story(faces, on.labels, args.photo),
                    "rule_off": photo_story(faces, off.labels, args.photo),
                },
            }
        )
        print(json.dumps(by_far[-1]["rule_off"]["labelled"]), file=sys.stderr, flush=True)
    seeds: dict[str, dict[str, list[float]]] = {"rule_on": {}, "rule_off": {}}
    for seed in range(args.seeds):  # Chinese whispers' random order: how much is seed noise
        for key, names in (("rule_on", files), ("rule_off", apart(files))):
            result, _, _ = cluster(faces, names, None, seed)
            got = score_clustering(result.labels[labelled], faces["labels"][labelled]).to_dict()
            for k in ("bcubed_f", "pairwise_f1"):
                seeds[key].setdefault(k, []).append(float(got[k]))
    seeds_out = {
        key: {k: {"values": v, "median": float(np.median(v))} for k, v in per.items()}
        for key, per in seeds.items()
    }
    cos = np.array(faces["cosine_to_cache"])
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "photos": len(det["files"]),
        "detections": int(det["counts"].sum()),
        "photos_without_detection": int((det["counts"] == 0).sum()),
        "photos_with_several_detections": int((det["counts"] > 1).sum()),
        "faces_clustered": len(files),
        "labelled_faces": len(labelled),
        "extra_faces": int(len(files) - len(labelled)),
        "dropped_as_marginface_cluster_does": faces["dropped"],
        "min_quality": faces["min_quality"],
        "central_cosine_to_cache": {
            "n": int(cos.size),
            "min": round(float(cos.min()), 5) if cos.size else None,
            "median": round(float(np.median(cos)), 5) if cos.size else None,
        },
        "central_only": report(central_only, base, bw, bc),
        "by_far": by_far,
        "seeds_at_auto_far": seeds_out,
        "seconds": {
            "detect_wall": round(float(det["wall_seconds"]), 1),
            "embed_several_wall": round(float(several["wall_seconds"]), 1),
            "this_run_wall": round(time.perf_counter() - t0, 1),
            "this_run_cpu": round(
                me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime, 1
            ),
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
