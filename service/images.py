"""Kept face data: a face chip per face (by default) and enrollment photos (opt-in), one file
each per face, encrypted at rest when a key is set.

With ``privacy.keep_face_chips`` (on by default) each enrolled face keeps its chip
(``service.vision.chip``: what re-embedding with another recognizer needs) under
``privacy.images_dir`` as ``<face id>.chip.enc`` (Fernet: AES-128-CBC + HMAC-SHA256, with
``privacy.images_key``) or ``<face id>.chip.img`` (no key). With ``privacy.keep_images`` (off by
default) the photo a REST enrollment used is kept beside it as ``<face id>.enc`` or
``<face id>.img``. Deleting a face or a subject deletes both; the start-up sweep erases both kinds
of a face the gallery no longer holds, also after an option was turned off.
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
#: names the gallery an images folder belongs to (``ImageVault.bind``)
GALLERY_MARKER = ".gallery-id"


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


#: file name endings of a face's kept data, after "<face id>." (temp files included)
PHOTO_SUFFIXES = ("enc", "img", "tmp")
CHIP_SUFFIXES = ("chip.enc", "chip.img", "chip.tmp")


class ImageVault:
    """The kept photos and face chips, addressed by face id. What is written is what the
    settings say is kept (``keeps_photos``, ``keeps_chips``); erasure and the sweep cover both
    kinds whatever the settings (data kept before an option was turned off is still erased)."""

    def __init__(self, settings: PrivacySettings) -> None:
        self.directory = Path(settings.images_dir)
        self.keeps_photos = settings.keep_images
        self.keeps_chips = settings.keep_face_chips
        if self.keeps_photos or self.keeps_chips:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # at start-up, not at the first enrollment
                if exc.errno == errno.ENOSPC:  # the service starts on a full disk (507 later)
                    log.warning("cannot create %s: the disk is full", self.directory)
                else:
                    raise ConfigError(
                        f"privacy.images_dir {self.directory} cannot be created "
                        f"({exc.strerror}): face chips are kept by default; set "
                        "MARGINFACE_PRIVACY__IMAGES_DIR to a writable folder (shared by "
                        "replicas), or MARGINFACE_PRIVACY__KEEP_FACE_CHIPS=false (migrating to "
                        "another recognizer then needs re-enrollment)"
                    ) from exc
        self._fernet: Fernet | None = None
        if settings.images_key is not None:
            try:
                self._fernet = Fernet(settings.images_key.get_secret_value().encode())
            except ValueError as exc:
                raise ConfigError(
                    "privacy.images_key is not a Fernet key (32 bytes, urlsafe base64): "
                    "make one with `marginface keys images-key`"
                ) from exc
        elif self.keeps_photos or self.keeps_chips:
            kept = [
                what
                for what, on in (("enrollment photos", self.keeps_photos),
                                 ("face chips", self.keeps_chips))
                if on
            ]  # fmt: skip
            log.warning(
                "privacy.images_key is not set: %s are kept unencrypted in %s",
                " and ".join(kept),
                self.directory,
            )

    @property
    def encrypted(self) -> bool:
        """Whether photos and chips are encrypted at rest."""
        return self._fernet is not None

    def _path(self, face_id: int, kind: str = "") -> Path:
        return self.directory / f"{int(face_id)}.{kind}{'enc' if self._fernet else 'img'}"

    def put(self, face_id: int, data: bytes) -> None:
        """Keep a face's photo (written to a temp file, then renamed: never half a file);
        InsufficientStorage on a full disk."""
        self._write(self._path(face_id), data, "photos")

    def put_chip(self, face_id: int, data: bytes) -> None:
        """Keep a face's chip (JPEG bytes), as ``put`` keeps a photo; InsufficientStorage."""
        self._write(self._path(face_id, "chip."), data, "face chips")

    def _write(self, path: Path, data: bytes, what: str) -> None:
        payload = self._fernet.encrypt(data) if self._fernet else data
        tmp = path.with_suffix(".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)  # not there when the start was
            with tmp.open("wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise InsufficientStorage(
                    f"the disk holding kept {what} ({self.directory}) is full: nothing was kept"
                ) from exc
            raise

    def keep(
        self, face_ids: list[int | None], photos: list[bytes] | None, chips: list[bytes] | None
    ) -> None:
        """Keep the photos and chips (one per face; None: a face not created) as far as the
        settings keep them; on a failure what was written is erased and the error raised."""
        kinds = [
            (put, data)
            for put, keep, data in ((self.put, self.keeps_photos, photos),
                                    (self.put_chip, self.keeps_chips, chips))
            if keep and data is not None
        ]  # fmt: skip
        try:
            for put, data in kinds:
                for fid, item in zip(face_ids, data, strict=True):
                    if fid is not None:
                        put(fid, item)
        except BaseException:
            self.delete([fid for fid in face_ids if fid is not None])
            raise

    @staticmethod
    def photo_of(vault: ImageVault | None, face_id: int) -> bytes:
        """A face's kept photo from ``vault`` (None: none kept); FaceNotFound."""
        if vault is None or not vault.keeps_photos:
            raise FaceNotFound(
                f"no photo is kept for face {face_id}: privacy.keep_images is off (the default)"
            )
        return vault.get(face_id)

    @staticmethod
    def chip_of(vault: ImageVault | None, face_id: int) -> bytes:
        """A face's kept chip from ``vault`` (None: none kept); FaceNotFound."""
        if vault is None or not vault.keeps_chips:
            raise FaceNotFound(
                f"no face chip is kept for face {face_id}: privacy.keep_face_chips is off"
            )
        return vault.chip(face_id)

    def has(self, face_id: int) -> bool:
        """Whether a photo is kept for this face."""
        return self._path(face_id).is_file()

    def get(self, face_id: int) -> bytes:
        """A face's kept photo; FaceNotFound when none is kept."""
        return self._read(self._path(face_id), f"no photo is kept for face {face_id}", "photo")

    def has_chip(self, face_id: int) -> bool:
        """Whether a face chip is kept for this face."""
        return self._path(face_id, "chip.").is_file()

    def chip(self, face_id: int) -> bytes:
        """A face's kept chip (JPEG bytes); FaceNotFound when none is kept."""
        missing = f"no face chip is kept for face {face_id}"
        return self._read(self._path(face_id, "chip."), missing, "face chip")

    def _read(self, path: Path, missing: str, what: str) -> bytes:
        if not path.is_file():
            raise FaceNotFound(missing)
        payload = path.read_bytes()
        if self._fernet is None:
            return payload
        try:
            return self._fernet.decrypt(payload)
        except InvalidToken as exc:
            raise GalleryCorrupted(
                f"the kept {what} {path.name} does not decrypt with privacy.images_key"
            ) from exc

    def delete(self, face_ids: list[int]) -> None:
        """Erase the photos and chips of these faces (whichever form they were kept in)."""
        for face_id in face_ids:
            for suffix in PHOTO_SUFFIXES + CHIP_SUFFIXES:
                (self.directory / f"{int(face_id)}.{suffix}").unlink(missing_ok=True)

    def bind(self, gallery_id: str) -> None:
        """Claim the folder for one gallery (a marker file, written by the first gallery that
        opens it): chips and photos are named by face id, so another gallery's would be swept
        away or overwritten. ConfigError when it belongs to another gallery."""
        if not gallery_id or not self.directory.is_dir():
            return
        marker = self.directory / GALLERY_MARKER
        try:
            owner = marker.read_text().strip()
        except FileNotFoundError:
            try:
                marker.write_text(gallery_id + "\n")
            except OSError as exc:  # a full disk: bound at the next start
                log.warning("could not bind %s to its gallery: %s", self.directory, exc)
            return
        if owner != gallery_id:
            raise ConfigError(
                f"{self.directory} holds the face chips and photos of another gallery ({owner}; "
                f"this one is {gallery_id}): give each gallery its own folder "
                "(MARGINFACE_PRIVACY__IMAGES_DIR; by default an 'images' folder beside the "
                f"gallery's). If this folder was restored for this gallery, delete {marker}"
            )

    def sweep(self, known_faces: Callable[[], set[int]]) -> int:
        """Erase every kept photo and chip whose face the gallery does not hold (what a crash
        between a face's delete and its photo's, or another replica's delete, can leave); the
        count of files.

        The folder is listed before the gallery is asked (``known_faces``): a photo is written
        after its face is committed, so every photo listed belongs to a face the gallery already
        answers for, unless that face was erased. The other order erased the photo of a face
        another replica enrolled between the two reads."""
        if not self.directory.is_dir():
            return 0
        listed = [
            (path, int(stem))
            for path in self.directory.iterdir()
            for stem, _, suffix in [path.name.partition(".")]
            if suffix in PHOTO_SUFFIXES + CHIP_SUFFIXES and stem.isdigit()
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
            log.warning(
                "removed %d kept photos and face chips of faces the gallery no longer holds",
                removed,
            )
        return removed
