"""Domain errors and their one mapping to HTTP.

Every failure the service reports has a stable ``code`` (part of the API contract) and a human
message. Vision and gallery code raise these without knowing about HTTP; ``install_handlers``
(called by ``create_app``) turns them, and the framework's own errors, into
``{"error": {"code": ..., "message": ..., "details"?: ...}}``; the middlewares answer with the
same ``error_response``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse


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


class ImageTooComplex(MarginFaceError):
    """An image whose structure would cost far more to decode than its pixels (a JPEG with
    thousands of scans, a PNG of tiny chunks): a guard against CPU bombs."""

    code = "image_too_complex"
    status = 422


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


class LowQuality(MarginFaceError):
    """A face below the enrollment quality floor (``min_quality``); details name the factor."""

    code = "low_quality"
    status = 422


class SubjectNotFound(MarginFaceError):
    """No subject with that id."""

    code = "subject_not_found"
    status = 404


class FaceNotFound(MarginFaceError):
    """No face with that id."""

    code = "face_not_found"
    status = 404


class NegativeNotFound(MarginFaceError):
    """No negative example ("not this person") with that id for that subject."""

    code = "negative_not_found"
    status = 404


class TooManyNegatives(MarginFaceError):
    """A subject holds as many negative examples as it may (``details.limit``): delete some
    first. The bound keeps every identify's veto check cheap."""

    code = "too_many_negatives"
    status = 409


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


class UnknownParameter(MarginFaceError):
    """A query parameter the route does not take (a typo, or a form field sent in the URL)."""

    code = "unknown_parameter"
    status = 422


class InvalidSubjectId(MarginFaceError):
    """A subject id outside the one rule (``service.subject_id``): refused everywhere, so no
    id can print like another or break a line."""

    code = "invalid_subject_id"
    status = 422


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


class ClusterNotFound(MarginFaceError):
    """A cluster job has no such cluster (merged away, emptied) or face."""

    code = "cluster_not_found"
    status = 404


class JobNotFinished(MarginFaceError):
    """The job has not produced what was asked for yet (clusters of a running job)."""

    code = "job_not_finished"
    status = 409


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


class AmbiguousCredentials(MarginFaceError):
    """Several API keys in one request: refused rather than guess which one counts."""

    code = "ambiguous_credentials"
    status = 400


class BodyTimeout(MarginFaceError):
    """The request body did not arrive within its deadline or above the minimum rate."""

    code = "request_timeout"
    status = 408


class InternalError(MarginFaceError):
    """A bug: nothing the caller did wrong (the log has the details under the request id)."""

    code = "internal_error"
    status = 500


class UnsupportedByBackend(MarginFaceError):
    """The configured gallery backend does not offer this operation (the message says what
    does the same job there)."""

    code = "unsupported_by_backend"
    status = 409


#: Starlette's own HTTP errors (routing, parsing) under stable codes
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_body(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    """The one error body; a ``retry_after_s`` detail also becomes a Retry-After header."""
    from service.api.json_line import JSONLineResponse

    body: dict[str, Any] = {"code": code, "message": message}
    headers = {}
    if details:
        body["details"] = details
        if "retry_after_s" in details:
            headers["Retry-After"] = str(int(details["retry_after_s"]))
    return JSONLineResponse(status_code=status, content={"error": body}, headers=headers)


def error_response(exc: MarginFaceError) -> JSONResponse:
    """The response for a domain error."""
    return error_body(exc.status, exc.code, exc.message, exc.details)


def install_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and Starlette's HTTP errors to the one error body.
    (Unexpected exceptions are answered by ``service.middleware.CatchAll``.)"""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MarginFaceError)
        return error_response(exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc'])}: {first['msg']}"
        return error_body(422, "validation_error", message, {"errors": errors})

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return error_body(exc.status_code, code, str(exc.detail))

    app.add_exception_handler(MarginFaceError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


class GalleryBusy(MarginFaceError):
    """Another process holds the gallery (a running server): an operation that replaces its
    store must not run under it."""

    code = "gallery_busy"
    status = 409


class MigrationIncomplete(MarginFaceError):
    """A gallery cannot switch to another model yet: some faces have no embedding of it."""

    code = "migration_incomplete"
    status = 409


class MigrationUnverified(MarginFaceError):
    """The new model's index failed the switch's check (faces do not find themselves): the
    model cannot tell the gallery's faces apart (e.g. trained too briefly); nothing changed."""

    code = "migration_unverified"
    status = 409


class NoFaceMigrated(MarginFaceError):
    """A switch that would leave no face comparable: not one has an embedding of the new model
    (nothing kept to re-embed from, or the migration ran without the service's settings)."""

    code = "no_face_migrated"
    status = 409


class ModelNotCalibrated(MarginFaceError):
    """A model without calibrated thresholds: identify cannot judge its scores."""

    code = "model_not_calibrated"
    status = 409


class MigrationRunning(MarginFaceError):
    """A model migration is already running in this service."""

    code = "migration_running"
    status = 409
