"""The gallery: subjects and faces in a durable store (the source of truth) and an index derived
from it, behind one write path (``Gallery``) and one backend contract (``backend.GalleryBackend``).
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
