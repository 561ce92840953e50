"""1M faces: which FAISS index answers a single query in under 3 ms at recall@1 >= 0.99 on two
cores. Build time, memory, single-query latency at one FAISS thread (wall and CPU), recall@1
against exact search, per factory and search parameter; and the recall of one index on real
embeddings. Prints one JSON line per measurement.

Steps (each caches what it makes under ``--dir``, default runs/index1m, so a long build is
done once and can run in the background):

- ``gallery``: 1M faces from the fitted realistic generator (``bench/realistic_gallery.py``,
  200,000 identities x 5) and 1,000 probes (new faces of enrolled identities), and the exact
  top-10 of each probe (``IndexFlatIP``, the reference for recall);
- ``build FACTORY...``: train on a subsample (``--train``, at least 39 per list), add all 1M,
  write the index (build wall and CPU seconds in a side file);
- ``search FACTORY...``: the built index's single-query p50/p99 over the 1,000 probes, one
  probe at a time, at one FAISS thread (``omp_set_num_threads(1)`` in the searching thread,
  as the service does), for each search parameter (``--params``, ';'-separated); recall@1
  (face: the exact first face; subject: a face of the same person first);
- ``real FACTORY``: real embeddings as the gallery (LFW, CelebA-299, Glint-24, all embedded by
  the service's SFace: ``bench/aligned_faces.py``), one photo of each person with 2 or more
  held out as a probe, padded to 1M with synthetic faces; the trained index (from ``build``)
  emptied and refilled; subject recall@1 of the index against exact search;
- ``service FACTORY``: the built index through the service's ``FaissIndex`` from a worker
  thread holding two OpenMP threads, and bare at those two threads;
- ``bandwidth``: this machine's memory bandwidth as numpy sees it (a 1 GiB copy).

Usage: nice -n 10 python bench/index_1m.py gallery
       nice -n 10 python bench/index_1m.py build "IVF4096,PQ32x4fs,RFlat"
       python bench/index_1m.py search "IVF4096,PQ32x4fs,RFlat" \
           --params "nprobe=256,k_factor_rf=16;..."
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N, PER, PROBES = 1_000_000, 5, 1000


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def emit(record: dict) -> None:
    record["load_average_1m"] = round(os.getloadavg()[0], 1)
    print(json.dumps(record), flush=True)


def name_of(factory: str) -> str:
    return factory.replace(",", "_")


def gallery(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(1M faces, 1,000 probes, exact top-10 ids), made once."""
    paths = [out / f for f in ("gallery.npy", "probes.npy", "exact.npy")]
    if all(p.is_file() for p in paths):
        x, q, e = (np.load(p, mmap_mode="r") for p in paths)
        return np.ascontiguousarray(x), np.ascontiguousarray(q), np.asarray(e)
    from bench.realistic_gallery import fitted_model

    model = fitted_model()
    x, q = model.gallery(N, per_identity=PER, probes=PROBES, seed=0)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    _, exact = flat.search(q, 10)
    out.mkdir(parents=True, exist_ok=True)
    for p, a in zip(paths, (x, q, exact), strict=True):
        np.save(p, a)
    emit(
        {
            "step": "gallery",
            "faces": len(x),
            "fit": {
                "scale": model.scale,
                "spread": model.spread,
                "between": model.between_scale,
                "mean": model.mean_scale,
            },
        }
    )
    return x, q, exact


def centroids(nlist: int, x: np.ndarray, train: int) -> np.ndarray:
    """Spherical k-means centroids (10 iterations) on a sample; two-level (128 groups first)
    above 4,096 lists, where one k-means over all lists is too slow for two loaded cores."""
    sample = x[np.sort(np.random.default_rng(0).permutation(len(x))[:train])]
    if nlist <= 4096:
        km = faiss.Kmeans(x.shape[1], nlist, niter=10, spherical=True, seed=1)
        km.train(sample)
        return np.asarray(km.centroids)
    from faiss.contrib.clustering import two_level_clustering

    c, _ = two_level_clustering(sample, 128, nlist, clustering_niter=10, spherical=True)
    return np.asarray(c, dtype=np.float32)


def build(factory: str, x: np.ndarray, out: Path, train: int) -> None:
    """Coarse centroids trained once per list count (cached), the codes trained on the same
    sample, all 1M added with the lists assigned through an HNSW graph over the centroids
    (exact assignment costs 1M x nlist inner products: tens of minutes on two loaded cores),
    then the index written with the quantizer the factory names (an HNSW graph or a flat
    scan of the same centroids)."""
    path = out / f"{name_of(factory)}.faiss"
    if path.is_file():
        return
    head, _, rest = factory.partition(",")
    nlist = int(head[3:].split("_")[0])
    flat_twin = out / f"{name_of(f'IVF{nlist},{rest}')}.faiss"
    if "_HNSW" in head and flat_twin.is_file():  # the same lists: only the quantizer differs
        wall, cpu = time.perf_counter(), time.process_time()
        index = faiss.read_index(str(flat_twin))
        ivf = faiss.extract_index_ivf(index)
        graph = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = 80
        graph.add(ivf.quantizer.reconstruct_n(0, ivf.quantizer.ntotal))
        ivf.quantizer = graph
        record = json.loads(flat_twin.with_suffix(".json").read_text())
        record.update(
            factory=factory,
            graph_s=round(time.perf_counter() - wall, 1),
            graph_cpu_s=round(time.process_time() - cpu, 1),
        )
        faiss.write_index(index, str(path))
        path.with_suffix(".json").write_text(json.dumps(record))
        emit(record)
        return
    cpath = out / f"centroids_{nlist}.npy"
    wall, cpu = time.perf_counter(), time.process_time()
    if not cpath.is_file():
        np.save(cpath, centroids(nlist, x, train if nlist <= 4096 else 3 * train))
    cents = np.load(cpath)
    km_s, km_cpu = time.perf_counter() - wall, time.process_time() - cpu
    index = faiss.index_factory(x.shape[1], f"IVF{nlist}_HNSW32,{rest}", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    hnsw = faiss.downcast_index(ivf.quantizer)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(cents)
    hnsw.hnsw.efSearch = 64
    sample = x[np.sort(np.random.default_rng(0).permutation(len(x))[:train])]
    index.train(sample)  # the quantizer is full: only the codes (PQ) train
    index.add(x)
    keep = []
    if "_HNSW" not in head:  # the same lists, searched through a flat scan of the centroids
        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(cents)
        ivf.quantizer = flat
        keep.append(flat)
    record = {
        "step": "build",
        "factory": factory,
        "threads": faiss.omp_get_max_threads(),
        "train_vectors": len(sample),
        "centroids_s": round(km_s, 1),
        "centroids_cpu_s": round(km_cpu, 1),
        "build_s": round(time.perf_counter() - wall, 1),
        "build_cpu_s": round(time.process_time() - cpu, 1),
    }
    faiss.write_index(index, str(path.with_suffix(".tmp")))
    path.with_suffix(".tmp").replace(path)
    path.with_suffix(".json").write_text(json.dumps(record))
    emit(record)


def single_queries(
    index: faiss.Index, q: np.ndarray
) -> tuple[np.ndarray, list[float], list[float]]:
    """Top-10 ids, wall ms and CPU ms per probe, searched one at a time."""
    found, wall, cpu = [], [], []
    index.search(q[:20], 10)  # warm-up
    for v in q:
        t, c = time.perf_counter(), time.thread_time()
        _, ids = index.search(v[None], 10)
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
        found.append(ids[0])
    return np.asarray(found), wall, cpu


def set_params(index: faiss.Index, params: str) -> None:
    """ParameterSpace's parameters, and ``quantizer_efSearch`` (which it cannot reach in a
    quantizer read from disk) set on the HNSW quantizer itself."""
    rest = [kv for kv in params.split(",") if kv and not kv.startswith("quantizer_efSearch=")]
    for kv in params.split(","):
        if kv.startswith("quantizer_efSearch="):
            quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
            quantizer.hnsw.efSearch = int(kv.split("=")[1])
    if rest:
        faiss.ParameterSpace().set_index_parameters(index, ",".join(rest))


def search(factory: str, params: list[str], out: Path) -> None:
    """One row per search parameter, at one FAISS thread."""
    _, q, exact = gallery(out)
    path = out / f"{name_of(factory)}.faiss"
    before = rss_mb()
    index = faiss.read_index(str(path))
    resident = rss_mb() - before
    built = json.loads(path.with_suffix(".json").read_text())
    faiss.omp_set_num_threads(1)  # per calling thread: this one searches
    for p in params:
        set_params(index, p)
        top, wall, cpu = single_queries(index, q)
        emit(
            {
                "step": "search",
                "factory": factory,
                "params": p,
                "faiss_threads": faiss.omp_get_max_threads(),
                "p50_ms": round(float(np.median(wall)), 3),
                "p99_ms": round(float(np.percentile(wall, 99)), 3),
                "cpu_p50_ms": round(float(np.median(cpu)), 3),
                "recall_at_1": round(float(np.mean(top[:, 0] == exact[:, 0])), 4),
                "subject_recall_at_1": round(
                    float(np.mean(top[:, 0] // PER == exact[:, 0] // PER)), 4
                ),
                "recall_at_10": round(
                    float(
                        np.mean(
                            [len(set(a) & set(b)) / 10 for a, b in zip(top, exact, strict=True)]
                        )
                    ),
                    4,
                ),
                "build_s": built["build_s"],
                "build_cpu_s": built["build_cpu_s"],
                "file_mb": round(path.stat().st_size / 1024**2, 1),
                "bytes_per_vector": round(path.stat().st_size / N, 1),
                "rss_growth_mb": round(resident, 1),
            }
        )


def real(factory: str, params: str, out: Path) -> None:
    """Subject recall@1 on real embeddings padded to 1M (the trained index refilled)."""
    from bench.aligned_faces import load

    emb, labels = [], []
    for name in ("lfw", "celeba", "glint"):
        d = load(name)
        emb.append(d["emb"])
        labels += [f"{name}:{x}" for x in d["labels"]]
    e, lab = np.concatenate(emb).astype(np.float32), np.array(labels)
    first: dict[str, int] = {}
    probe_rows, gallery_rows = [], []
    counts: dict[str, int] = {}
    for label in lab:
        counts[label] = counts.get(label, 0) + 1
    for i, label in enumerate(lab):  # the first photo of each person with 2+ is the probe
        if counts[label] >= 2 and label not in first:
            first[label] = i
            probe_rows.append(i)
        else:
            gallery_rows.append(i)
    x, _, _ = gallery(out)
    padded = np.concatenate([e[gallery_rows], x[: N - len(gallery_rows)]])
    owner = np.concatenate([lab[gallery_rows], np.full(N - len(gallery_rows), "synthetic")])
    probes = e[probe_rows]
    truth = lab[probe_rows]
    flat = faiss.IndexFlatIP(padded.shape[1])
    flat.add(padded)
    _, exact = flat.search(probes, 1)
    del flat
    index = faiss.read_index(str(out / f"{name_of(factory)}.faiss"))
    index.reset()  # keep the training (synthetic), refill with the real + synthetic gallery
    ivf = faiss.extract_index_ivf(index)
    flat = ivf.quantizer
    wall = time.perf_counter()
    if isinstance(faiss.downcast_index(flat), faiss.IndexFlat):  # assign as build() does
        graph = faiss.IndexHNSWFlat(padded.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = 80
        graph.add(flat.reconstruct_n(0, flat.ntotal))
        graph.hnsw.efSearch = 64
        ivf.quantizer = graph
        index.add(padded)
        ivf.quantizer = flat
    else:
        index.add(padded)
    add_s = time.perf_counter() - wall
    faiss.omp_set_num_threads(1)
    for p in params.split(";"):  # every setting on the one refill
        set_params(index, p)
        top, lat, _ = single_queries(index, probes)
        emit(
            {
                "step": "real",
                "factory": factory,
                "params": p,
                "gallery_real_faces": len(gallery_rows),
                "padded_to": N,
                "probes": len(probe_rows),
                "people": len(first),
                "refill_s": round(add_s, 1),
                "p50_ms": round(float(np.median(lat)), 3),
                "recall_at_1_vs_exact": round(float(np.mean(top[:, 0] == exact[:, 0])), 4),
                "subject_recall_at_1_vs_exact": round(
                    float(np.mean(owner[top[:, 0]] == owner[exact[:, 0]])), 4
                ),
                "exact_rank1_identification": round(float(np.mean(owner[exact[:, 0]] == truth)), 4),
                "index_rank1_identification": round(float(np.mean(owner[top[:, 0]] == truth)), 4),
            }
        )


def service(factory: str, params: str, out: Path) -> None:
    """The built index through the service's own ``FaissIndex`` (an IndexIDMap2 over it, the
    search parameters, the per-call thread pin), searched from a worker thread that holds two
    OpenMP threads, as a server's pool may; beside it the bare index searched from that thread
    at its two threads (no pin)."""
    from concurrent.futures import ThreadPoolExecutor

    from service.gallery.index import FaissIndex

    _, q, exact = gallery(out)
    index = faiss.read_index(str(out / f"{name_of(factory)}.faiss"))
    set_params(index, params)
    wrapped = faiss.IndexIDMap2(faiss.IndexFlatIP(index.d))  # FAISS wants it empty: then
    wrapped.index, wrapped.ntotal = index, index.ntotal  # the filled one goes in, ids 0..n-1
    faiss.copy_array_to_vector(np.arange(index.ntotal, dtype=np.int64), wrapped.id_map)
    wrapped.construct_rev_map()
    vi = FaissIndex(index.d, factory, search_params=params)
    vi._index, vi.active_factory = wrapped, factory

    def run(search: Any) -> tuple[list[float], list[float], np.ndarray]:
        faiss.omp_set_num_threads(2)
        search(q[:20])
        wall, cpu, top = [], [], []
        for v in q:
            t, c = time.perf_counter(), time.thread_time()
            _, ids = search(v[None])
            wall.append((time.perf_counter() - t) * 1000)
            cpu.append((time.thread_time() - c) * 1000)
            top.append(ids[0, 0])
        return wall, cpu, np.asarray(top)

    with ThreadPoolExecutor(1) as pool:
        for what, fn in (
            ("FaissIndex.search (pinned to 1 thread)", lambda v: vi.search(v, 10)),
            ("bare index, the worker's 2 threads", lambda v: wrapped.search(v, 10)),
        ):
            wall, cpu, top = pool.submit(run, fn).result()
            emit(
                {
                    "step": "service",
                    "factory": factory,
                    "params": params,
                    "path": what,
                    "p50_ms": round(float(np.median(wall)), 3),
                    "p99_ms": round(float(np.percentile(wall, 99)), 3),
                    "cpu_p50_ms": round(float(np.median(cpu)), 3),
                    "recall_at_1": round(float(np.mean(top == exact[:, 0])), 4),
                }
            )


def bandwidth() -> None:
    """A 1 GiB numpy copy, best of 5 (read + write bytes per second) and a read-only sum."""
    a = np.ones(1 << 28, dtype=np.float32)
    b = np.empty_like(a)
    copies, sums = [], []
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        copies.append(time.perf_counter() - t)
        t = time.perf_counter()
        a.sum()
        sums.append(time.perf_counter() - t)
    emit(
        {
            "step": "bandwidth",
            "copy_GBps_read_plus_write": round(2 * a.nbytes / min(copies) / 1e9, 2),
            "sum_GBps_read": round(a.nbytes / min(sums) / 1e9, 2),
        }
    )


def main() -> int:
    global N
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "step", choices=("gallery", "build", "search", "real", "service", "bandwidth")
    )
    parser.add_argument("factories", nargs="*")
    parser.add_argument("--dir", type=Path, default=ROOT / "runs" / "index1m")
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--params", default="")
    parser.add_argument("--faces", type=int, default=0, help="gallery size (small: a dry run)")
    args = parser.parse_args()
    N = args.faces or N
    if args.step == "bandwidth":
        bandwidth()
        return 0
    x, _, _ = gallery(args.dir)
    for factory in args.factories:
        if args.step == "build":
            build(factory, x, args.dir, args.train)
        elif args.step == "search":
            search(factory, args.params.split(";"), args.dir)
        elif args.step == "real":
            real(factory, args.params, args.dir)
        elif args.step == "service":
            service(factory, args.params, args.dir)
    emit(
        {
            "step": "done",
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
