"""Kept enrollment photos (opt-in): one file per face, encrypted at rest when a key is set.

By default MarginFace keeps only embeddings and metadata. With ``privacy.keep_images`` each photo
a REST enrollment used is written under ``privacy.images_dir`` as ``<face id>.enc`` (Fernet:
AES-128-CBC + HMAC-SHA256, with ``privacy.images_key``) or ``<face id>.img`` (no key). Deleting a
face or a subject deletes its photos too.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from service.errors import ConfigError, FaceNotFound, GalleryCorrupted, InsufficientStorage
from service.settings import PrivacySettings

log = logging.getLogger(__name__)


def media_type(data: bytes) -> str:
    """The content type of a kept photo, from its first bytes (what browsers need to show it)."""
    for magic, kind in (
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"GIF8", "image/gif"),
        (b"BM", "image/bmp"),
    ):
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def new_key() -> str:
    """A fresh key for ``privacy.images_key``."""
    return Fernet.generate_key().decode()


class ImageVault:
    """The kept photos, addressed by face id."""

    def __init__(self, settings: PrivacySettings) -> None:
        self.directory = Path(settings.images_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fernet: Fernet | None = None
        if settings.images_key is not None:
            try:
                self._fernet = Fernet(settings.images_key.get_secret_value().encode())
            except ValueError as exc:
                raise ConfigError(
                    "privacy.images_key is not a Fernet key (32 bytes, urlsafe base64): "
                    "make one with `marginface keys images-key`"
                ) from exc
        else:
            log.warning(
                "privacy.keep_images is on without privacy.images_key: photos are kept "
                "unencrypted in %s",
                self.directory,
            )

    @property
    def encrypted(self) -> bool:
        """Whether photos are encrypted at rest."""
        return self._fernet is not None

    def _path(self, face_id: int) -> Path:
        return self.directory / f"{int(face_id)}.{'enc' if self._fernet else 'img'}"

    def put(self, face_id: int, data: bytes) -> None:
        """Keep a face's photo (written to a temp file, then renamed: never half a file);
        InsufficientStorage on a full disk."""
        payload = self._fernet.encrypt(data) if self._fernet else data
        path = self._path(face_id)
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise InsufficientStorage(
                    f"the disk holding kept photos ({self.directory}) is full: nothing was kept"
                ) from exc
            raise

    def has(self, face_id: int) -> bool:
        """Whether a photo is kept for this face."""
        return self._path(face_id).is_file()

    def get(self, face_id: int) -> bytes:
        """A face's kept photo; FaceNotFound when none is kept."""
        path = self._path(face_id)
        if not path.is_file():
            raise FaceNotFound(f"no photo is kept for face {face_id}")
        payload = path.read_bytes()
        if self._fernet is None:
            return payload
        try:
            return self._fernet.decrypt(payload)
        except InvalidToken as exc:
            raise GalleryCorrupted(
                f"the kept photo of face {face_id} does not decrypt with privacy.images_key"
            ) from exc

    def delete(self, face_ids: list[int]) -> None:
        """Erase the photos of these faces (whichever form they were kept in)."""
        for face_id in face_ids:
            for suffix in ("enc", "img", "tmp"):
                (self.directory / f"{int(face_id)}.{suffix}").unlink(missing_ok=True)

    def sweep(self, known_faces: Callable[[], set[int]]) -> int:
        """Erase every kept photo whose face the gallery does not hold (what a crash between a
        face's delete and its photo's, or another replica's delete, can leave); the count.

        The folder is listed before the gallery is asked (``known_faces``): a photo is written
        after its face is committed, so every photo listed belongs to a face the gallery already
        answers for, unless that face was erased. The other order erased the photo of a face
        another replica enrolled between the two reads."""
        listed = [
            (path, int(stem))
            for path in self.directory.iterdir()
            for stem, _, suffix in [path.name.partition(".")]
            if suffix in ("enc", "img", "tmp") and stem.isdigit()
        ]
        if not listed:
            return 0
        known = known_faces()
        removed = 0
        for path, face_id in listed:
            if face_id not in known:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.warning("removed %d kept photos of faces the gallery no longer holds", removed)
        return removed
