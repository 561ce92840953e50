"""The gallery: subjects and faces in a durable store (the source of truth, ``store.Store``) and
an index derived from it (``vector_index.VectorIndex``), behind one write path (``Gallery``).

An enrollment, read in three files: ``gallery.py`` (``Gallery.add_faces``: checks, lock, kept
photos, audit; ``_enroll``: store first, index second), ``sql.py`` (``SqlStore.add_faces``: one
transaction) and ``sync.py`` (``IndexSync.add``: the index follows; a failed index write is
repaired, never lost).
"""

from service.gallery.gallery import Candidate, Gallery
from service.gallery.records import FaceRecord, Negative, NewFace, Subject
from service.gallery.sqlite import export_store, import_store

__all__ = [
    "Candidate",
    "FaceRecord",
    "Gallery",
    "Negative",
    "NewFace",
    "Subject",
    "export_store",
    "import_store",
]
