"""FAISS's OpenMP threads where the gallery calls it: a request's search on one thread, set in
the thread that searches (OpenMP's count is per calling thread); builds and bulk searches on
the configured count. Observed inside FAISS's own calls, in a worker thread like a server's."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np
import pytest

from service.gallery.index import ALL_THREADS, BULK_QUERIES, FaissIndex
from tests.gallery.test_gallery import DIM, unit


def _record(
    monkeypatch: pytest.MonkeyPatch, cls: Any, name: str, seen: list[tuple[str, int]]
) -> None:
    """Wrap ``cls.name`` to note the calling thread's OpenMP count while FAISS runs it."""
    original: Callable[..., Any] = getattr(cls, name)

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((name, faiss.omp_get_max_threads()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, spy)


def test_requests_search_on_one_thread_and_builds_on_all(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []
    for name in ("train", "add_with_ids", "search"):
        _record(monkeypatch, faiss.IndexIVFFlat, name, seen)
    rng = np.random.default_rng(4)
    vecs = unit(rng, 400)
    index = FaissIndex(DIM, "IVF4,Flat", search_params="nprobe=4", build_threads=2)

    def in_worker() -> tuple[int, int]:
        faiss.omp_set_num_threads(2)  # what a fresh worker thread may hold
        index.rebuild(np.arange(400, dtype=np.int64), vecs)
        index.search(vecs[:1], 3)  # a request
        index.add(np.array([1000], dtype=np.int64), vecs[:1])  # an enrolment
        after_request = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        index.search(vecs[:BULK_QUERIES], 3)  # a bulk job
        return after_request, faiss.omp_get_max_threads()

    with ThreadPoolExecutor(1) as pool:
        after_request, after_bulk = pool.submit(in_worker).result()
    assert seen == [
        ("train", 2),
        ("add_with_ids", 2),
        ("search", 1),
        ("add_with_ids", 1),
        ("search", 2),
    ]
    assert (after_request, after_bulk) == (2, 1)  # the thread's own count is given back


def test_the_default_build_uses_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []
    _record(monkeypatch, faiss.IndexIVFFlat, "train", seen)
    index = FaissIndex(DIM, "IVF4,Flat")

    def in_worker() -> None:
        faiss.omp_set_num_threads(1)
        index.rebuild(np.arange(300, dtype=np.int64), unit(np.random.default_rng(5), 300))

    with ThreadPoolExecutor(1) as pool:
        pool.submit(in_worker).result()
    assert seen == [("train", ALL_THREADS)]
