"""What "not this person" adds to an identify's search (JSON).

Recognition.rank, which every identify goes through, searches the gallery for the top-k
subjects, then reads the negative examples of those few subjects in one query and applies the
veto (``service.identification.veto``). This times, per probe, the search alone against the
search with that query and the veto, on an embedded gallery of synthetic unit vectors where
every subject holds the most negatives it may (``NEGATIVES_PER_SUBJECT``), so every candidate
brings its full set: the worst case of the query's size (``--per-subject 0``: a gallery without
negatives, the common case, where the query finds nothing).

Usage: python bench/negatives_cost.py [--subjects 1000] [--probes 300] [--top-k 5]
       [--per-subject 100]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.gallery import FaceRecord, Subject  # noqa: E402
from service.gallery.embedded import embedded_gallery  # noqa: E402
from service.gallery.gallery import NEGATIVES_PER_SUBJECT  # noqa: E402
from service.gallery.records import Negative  # noqa: E402
from service.identification import veto  # noqa: E402

MODEL, DIM = "bench@0", 128


def units(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=1_000)
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--per-subject", type=int, default=NEGATIVES_PER_SUBJECT)
    args = parser.parse_args()
    per = args.per_subject
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        g = embedded_gallery(Path(tmp), model_id=MODEL, embedding_dim=DIM)
        ids = [f"s{i}" for i in range(args.subjects)]
        g.import_subjects([Subject(s, "", {}, 0.0) for s in ids])
        faces = units(rng, args.subjects)
        g.import_faces([
            (FaceRecord(i + 1, s, MODEL, [0, 0, 1, 1], 1.0, f"{i}", 0.0), faces[i])
            for i, s in enumerate(ids)
        ])  # fmt: skip
        for lo in range(0, args.subjects if per else 0, 200):  # every subject as full
            batch = ids[lo : lo + 200]
            vectors = units(rng, len(batch) * per)
            g.import_negatives([
                (Negative(0, s, MODEL, "probe", None, 0.0), vectors[j * per + n])
                for j, s in enumerate(batch) for n in range(per)
            ])  # fmt: skip
        probes = faces[rng.choice(args.subjects, args.probes)] + 0.05 * units(rng, args.probes)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        k = max(args.top_k, 2)
        timings: dict[str, list[float]] = {"search": [], "search_and_veto": []}
        cpu: dict[str, float] = {}
        vetoed = 0
        for name in ("search", "search_and_veto", "search", "search_and_veto"):
            started_cpu = cpu_s()
            for p in probes:
                t = time.perf_counter()
                (found,) = g.search(p[None], top_k=k, model_id=MODEL)
                if name == "search_and_veto":
                    negatives = g.negatives_of([c.subject_id for c in found], model_id=MODEL)
                    vetoed += len(veto(p, found, negatives)[1])
                timings[name].append(time.perf_counter() - t)
            cpu[name] = cpu.get(name, 0.0) + cpu_s() - started_cpu
        g.close()
    out = {
        "subjects": args.subjects,
        "negatives_per_subject": per,
        "negatives": args.subjects * per,
        "top_k_searched": k,
        "probes": args.probes * 2,
        **{
            f"{name}_ms": {
                "p50": round(float(np.percentile(np.array(t) * 1000, 50)), 3),
                "p99": round(float(np.percentile(np.array(t) * 1000, 99)), 3),
                "wall_s": round(sum(t), 3),
                "cpu_s": round(cpu[name], 3),
            }
            for name, t in timings.items()
        },
        "vetoed_candidates": vetoed,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
