"""Issue 26, finding 1: a delete landing while the index is saved for an earlier one."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.gallery.embedded import embedded_gallery
from service.gallery.index import INDEX_FILE, FaissIndex
from tests.gallery.test_gallery import DIM, MODEL, face, unit


class _SaveGate:
    """Holds the first index save after ``arm`` until the test lets it go, and says when it has
    started: the second delete then lands exactly while the first delete's save runs."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.proceed = threading.Event()
        self.armed = threading.Event()
        self.real = FaissIndex.save

    def arm(self) -> None:
        self.started.clear()
        self.proceed.clear()
        self.armed.set()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real, started, proceed, armed = self.real, self.started, self.proceed, self.armed

        def gated_save(index: FaissIndex, *args: Any, **kwargs: Any) -> None:
            if armed.is_set():
                armed.clear()
                started.set()
                proceed.wait(10)
            real(index, *args, **kwargs)

        monkeypatch.setattr(FaissIndex, "save", gated_save)


def test_back_to_back_deletes_while_the_index_saves_leave_no_vector_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Main: maintain() cleared the second delete's pending flag after its _save(), so the
    second face stayed in index.faiss until the next periodic save (12 s and more)."""
    rng = np.random.default_rng(26)
    gate = _SaveGate()
    gate.install(monkeypatch)
    # the gallery's own upkeep thread; only an erasure makes it run
    g = embedded_gallery(tmp_path, model_id=MODEL, embedding_dim=DIM, upkeep_interval_s=3600)
    g.create_subject("s", "S", {})
    try:
        for round_ in range(50):
            vecs = unit(rng, 2)
            (a, _), (b, _) = g.add_faces(
                "s", [face(vecs[0], f"a{round_}"), face(vecs[1], f"b{round_}")], model_id=MODEL
            )
            g.flush()  # both on disk first, so that the check below can fail
            on_disk = (tmp_path / INDEX_FILE).read_bytes()
            assert all(v.tobytes()[:64] in on_disk for v in vecs)
            gate.arm()
            g.delete_face(a)
            gate.started.wait(2)  # the first delete's save (on main it may never come)
            g.delete_face(b)  # lands while the first delete's save runs
            gate.proceed.set()
            deadline = time.monotonic() + 2
            while True:
                saved = (tmp_path / INDEX_FILE).read_bytes()
                gone = all(v.tobytes()[:64] not in saved for v in vecs)
                if gone or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert gone, f"round {round_}: a deleted vector is still in index.faiss after 2 s"
    finally:
        gate.armed.clear()
        gate.proceed.set()
        g.close()


def test_an_opened_gallery_runs_its_own_upkeep(tmp_path: Path) -> None:
    """Whoever opens the gallery (the service, the CLI, a job) need not start its upkeep: a
    face deleted from a gallery opened through ``backends.open_gallery`` leaves index.faiss
    within moments, with nobody calling ``flush``, and ``close`` stops the thread."""
    from service.gallery import backends
    from service.settings import GallerySettings

    rng = np.random.default_rng(7)
    settings = GallerySettings(path=tmp_path, flush_interval_s=3600)
    before = {t for t in threading.enumerate() if t.name == "gallery-upkeep"}
    g = backends.open_gallery(settings, model_id=MODEL, embedding_dim=DIM)
    assert {t for t in threading.enumerate() if t.name == "gallery-upkeep"} - before
    try:
        g.create_subject("s", "S", {})
        vec = unit(rng, 1)[0]
        ((fid, _),) = g.add_faces("s", [face(vec, "a")], model_id=MODEL)
        g.flush()
        assert vec.tobytes()[:64] in (tmp_path / INDEX_FILE).read_bytes()
        g.delete_face(fid)
        deadline = time.monotonic() + 2
        while vec.tobytes()[:64] in (tmp_path / INDEX_FILE).read_bytes():
            assert time.monotonic() < deadline, "the deleted vector is still in index.faiss"
            time.sleep(0.05)
    finally:
        g.close()
    assert {t for t in threading.enumerate() if t.name == "gallery-upkeep"} <= before
