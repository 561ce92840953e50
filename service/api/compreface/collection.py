"""CompreFace's face collection over the gallery: a CompreFace subject is a MarginFace
subject's *name* (unique within the collection); a new subject's id is its name when that id is
free. Every write goes through the gallery (``service.gallery.Gallery``) and enrollment through
``Recognition.enroll``, as for our own routes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from service.errors import SubjectExists, SubjectNotFound
from service.gallery import FaceRecord, Gallery, Subject
from service.subject_id import is_subject_id

PAGE = 500


class FaceCollection:
    """Subject names and their examples (faces)."""

    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery

    def subjects(self) -> Iterator[Subject]:
        """Every subject, oldest first."""
        offset = 0
        while True:
            items, total = self.gallery.list_subjects(offset, PAGE)
            yield from items
            offset += len(items)
            if not items or offset >= total:
                return

    def find(self, name: str) -> Subject | None:
        """The subject called ``name``, or None."""
        if is_subject_id(name):  # the fast way, where the name can be an id
            try:
                subject = self.gallery.get_subject(name)
                if subject.name == name:
                    return subject
            except SubjectNotFound:
                pass
        pattern = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        offset = 0
        while True:
            items, total = self.gallery.list_subjects(offset, PAGE, pattern)
            for subject in items:
                if subject.name == name:
                    return subject
            offset += len(items)
            if not items or offset >= total:
                return None

    def get(self, name: str) -> Subject:
        """The subject called ``name``; SubjectNotFound with CompreFace's message."""
        subject = self.find(name)
        if subject is None:
            raise SubjectNotFound(f"Subject {name} not found")
        return subject

    def create(self, name: str) -> Subject:
        """A new subject; SubjectExists when the name is taken."""
        if self.find(name) is not None:
            raise SubjectExists("Subject already exists")
        if is_subject_id(name):  # the name is the id where it can be ("Colin Powell" cannot)
            try:
                return self.gallery.create_subject(name, name, {})
            except SubjectExists:  # the id is taken by a renamed subject: a fresh id
                pass
        return self.gallery.create_subject(uuid.uuid4().hex, name, {})

    def ensure(self, name: str) -> Subject:
        """The subject called ``name``, created if missing (CompreFace's add example does)."""
        try:
            return self.create(name)
        except SubjectExists:
            return self.get(name)

    def discard_if_empty(self, subject_id: str) -> None:
        """Delete a subject this request created when it ended up with no example."""
        try:
            if not self.gallery.list_faces(subject_id):
                self.gallery.delete_subject(subject_id)
        except SubjectNotFound:
            pass

    def rename(self, name: str, new_name: str) -> bool:
        """Rename; CompreFace merges into an existing subject, which the gallery cannot do
        (faces never move between subjects): refused with SubjectExists."""
        subject = self.get(name)
        if new_name == name:
            return False
        if self.find(new_name) is not None:
            raise SubjectExists(
                f"Subject already exists: {new_name!r}; merging two subjects is not supported "
                "by MarginFace (add the examples to the subject instead)"
            )
        self.gallery.update_subject(subject.id, new_name, None)
        return True

    def examples(self, name: str | None) -> list[tuple[FaceRecord, str]]:
        """The faces of one subject, or of all, oldest first, with their subject's name."""
        subjects = [self.get(name)] if name is not None else list(self.subjects())
        out = [(face, s.name) for s in subjects for face in self.gallery.list_faces(s.id)]
        out.sort(key=lambda item: (item[0].created_at, item[0].id))
        return out

    def owner(self, face_id: int) -> Subject:
        """The subject a face belongs to; FaceNotFound."""
        from service.errors import FaceNotFound

        subject_id = self.gallery.face_owner(face_id)
        if subject_id is None:
            raise FaceNotFound(f"no example with image id for face {face_id}")
        return self.gallery.get_subject(subject_id)
