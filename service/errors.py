"""Domain errors and their one mapping to HTTP.

Every failure the service reports has a stable ``code`` (part of the API contract) and a human
message. Vision and gallery code raise these without knowing about HTTP; ``app.py`` installs the
handlers that turn them into ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import Any


class MarginFaceError(Exception):
    """Base of every error the service reports to a caller."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class ConfigError(MarginFaceError):
    """Settings that cannot work together; raised at start-up, never per request."""

    code = "config_error"


class ModelError(MarginFaceError):
    """A model is unknown, missing, corrupted, or cannot run on the requested device."""

    code = "model_error"
    status = 503


class InvalidImage(MarginFaceError):
    """The bytes are not an image we can decode (empty, truncated, not an image at all)."""

    code = "invalid_image"
    status = 422


class UnsupportedImage(MarginFaceError):
    """A decodable image we refuse on purpose (animated, too small)."""

    code = "unsupported_image"
    status = 422


class ImageTooLarge(MarginFaceError):
    """More pixels than the limit: a guard against decompression bombs."""

    code = "image_too_large"
    status = 413


class PayloadTooLarge(MarginFaceError):
    """The request body is over the upload limit."""

    code = "payload_too_large"
    status = 413


class NoFace(MarginFaceError):
    """No face was found where one is required."""

    code = "no_face"
    status = 422


class MultipleFaces(MarginFaceError):
    """Several faces where the policy asks for exactly one."""

    code = "multiple_faces"
    status = 422


class SubjectNotFound(MarginFaceError):
    """No subject with that id."""

    code = "subject_not_found"
    status = 404


class FaceNotFound(MarginFaceError):
    """No face with that id."""

    code = "face_not_found"
    status = 404


class SubjectExists(MarginFaceError):
    """A subject with that id already exists."""

    code = "subject_exists"
    status = 409


class ModelMismatch(MarginFaceError):
    """The gallery was built with another embedding model; embeddings would not be comparable."""

    code = "model_mismatch"
    status = 409


class GalleryCorrupted(MarginFaceError):
    """The durable store cannot be read; we refuse rather than start empty."""

    code = "gallery_corrupted"
    status = 503


class Unauthorized(MarginFaceError):
    """Missing or wrong API key."""

    code = "unauthorized"
    status = 401


class InvalidRequest(MarginFaceError):
    """Parameters that parse but make no sense together (a threshold outside [-1, 1], ...)."""

    code = "invalid_request"
    status = 422


class Overloaded(MarginFaceError):
    """The embedding queue is full: back off and retry (sent with a Retry-After header)."""

    code = "overloaded"
    status = 503


class JobNotFound(MarginFaceError):
    """No batch job with that id (jobs live in memory; a restart forgets them)."""

    code = "job_not_found"
    status = 404


class InvalidArchive(MarginFaceError):
    """A zip upload that is not a zip, or one we refuse to unpack (bomb, unsafe paths)."""

    code = "invalid_archive"
    status = 422


class Forbidden(MarginFaceError):
    """The key is valid but may not do this, or a path is outside the allowed roots."""

    code = "forbidden"
    status = 403


class RequestTimeout(MarginFaceError):
    """The request ran past the configured limit; the work is abandoned, nothing half-written."""

    code = "timeout"
    status = 503


class BackendUnavailable(MarginFaceError):
    """The shared database or vector engine (distributed gallery) cannot be reached right now;
    nothing was half-written. Retry after a moment."""

    code = "backend_unavailable"
    status = 503


class SchemaOutdated(MarginFaceError):
    """The gallery's schema is older (PostgreSQL: run `marginface db upgrade`) or newer (either
    backend: a later release wrote it; upgrade MarginFace) than this release expects."""

    code = "schema_outdated"
    status = 503


class InsufficientStorage(MarginFaceError):
    """The disk (or the database's) is full: the write was refused and nothing of it is kept;
    deletes still work. Free space and retry."""

    code = "insufficient_storage"
    status = 507


class UnsupportedByBackend(MarginFaceError):
    """The configured gallery backend does not offer this operation (the message says what
    does the same job there)."""

    code = "unsupported_by_backend"
    status = 409
