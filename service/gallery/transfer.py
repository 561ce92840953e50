"""Copying a gallery between backends (`marginface gallery migrate`), and proving the copy.

Subjects, faces and negative examples are copied as they are (ids, names, metadata, creation
times, face ids and embeddings), so the two galleries answer a search with the same subjects,
faces and scores, and veto the same ones.
Run it with the API stopped (or read-only): pages are read one after another, not from one
snapshot.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from service.errors import InvalidRequest, ModelMismatch
from service.gallery.gallery import Gallery

log = logging.getLogger(__name__)


def copy_gallery(source: Gallery, target: Gallery, *, batch: int = 2000) -> dict[str, Any]:
    """Copy every subject and face of ``source`` into the empty ``target`` (its index follows
    each page)."""
    if target.model_id != source.model_id:
        raise ModelMismatch(
            f"the target gallery is pinned to {target.model_id}, the source holds "
            f"{source.model_id}: use an empty target",
            gallery_model=target.model_id,
            service_model=source.model_id,
        )
    subjects, faces = target.counts()
    if subjects or faces:
        raise InvalidRequest(
            f"the target gallery is not empty ({subjects} subjects, {faces} faces); "
            "migrate into an empty database or folder"
        )
    started = time.monotonic()
    copied_subjects = copied_faces = 0
    for page in source.iter_subjects(batch):
        target.import_subjects(page)
        copied_subjects += len(page)
    for rows in source.iter_faces(batch):
        target.import_faces(rows)  # indexed as they are copied
        copied_faces += len(rows)
        log.info("copied %d faces", copied_faces)
    copied_negatives = 0
    for negatives in source.iter_negatives(batch):  # after the faces they may be copies of
        target.import_negatives(negatives)
        copied_negatives += len(negatives)
    target.flush()
    return {
        "subjects": copied_subjects,
        "faces": copied_faces,
        "negatives": copied_negatives,
        "seconds": round(time.monotonic() - started, 2),
    }


def compare_galleries(
    source: Gallery, target: Gallery, *, probes: int = 100, top_k: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Counts of both, and the searches of ``probes`` sampled faces (each disturbed a little,
    so it is a near neighbour, not the stored vector) through both: same subjects, same faces,
    scores within 1e-4. Returns the figures and the probes that differ."""
    src_counts, dst_counts = source.counts(), target.counts()
    ids = source.face_ids()
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(ids, size=min(probes, len(ids)), replace=False).tolist())
    vectors = _vectors_of(source, sample)
    mismatches: list[dict[str, Any]] = []
    indexed = int(target.stats()["indexed"])
    if len(vectors):
        noisy = vectors + rng.normal(0, 0.02, vectors.shape).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        a = source.search(noisy, top_k=top_k, model_id=source.model_id)
        b = target.search(noisy, top_k=top_k, model_id=target.model_id)
        for face_id, got_a, got_b in zip(sample, a, b, strict=True):
            same = [(c.subject_id, c.face_id) for c in got_a] == [
                (c.subject_id, c.face_id) for c in got_b
            ] and all(abs(x.score - y.score) <= 1e-4 for x, y in zip(got_a, got_b, strict=True))
            if not same:
                mismatches.append(
                    {
                        "probe_face": face_id,
                        "source": [(c.subject_id, c.face_id, round(c.score, 5)) for c in got_a],
                        "target": [(c.subject_id, c.face_id, round(c.score, 5)) for c in got_b],
                    }
                )
    return {
        "source": {"subjects": src_counts[0], "faces": src_counts[1]},
        "target": {
            "subjects": dst_counts[0],
            "faces": dst_counts[1],
            "indexed": indexed,
        },
        "probes": len(sample),
        "identical_searches": len(sample) - len(mismatches),
        "mismatches": mismatches[:10],
        "ok": src_counts == dst_counts and indexed == dst_counts[1] and not mismatches,
    }


def _vectors_of(gallery: Gallery, face_ids: list[int]) -> np.ndarray:
    """The stored embeddings of these faces, in the order given."""
    wanted = set(face_ids)
    found: dict[int, np.ndarray] = {}
    for page in gallery.iter_faces(2000):
        for record, vector in page:
            if record.id in wanted:
                found[record.id] = vector
    dim = gallery.embedding_dim
    return np.stack([found[i] for i in face_ids]) if face_ids else np.zeros((0, dim), np.float32)
