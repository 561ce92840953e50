"""The gallery: a durable store (source of truth) and a FAISS index derived from it."""

from service.gallery.gallery import Candidate, Gallery, export_store, import_store
from service.gallery.store import FaceRecord, NewFace, Subject

__all__ = [
    "Candidate",
    "FaceRecord",
    "Gallery",
    "NewFace",
    "Subject",
    "export_store",
    "import_store",
]
