"""What the CompreFace routes share: image bodies, face options, the face collection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Query, Request

from service.api.compreface.collection import FaceCollection
from service.api.compreface.faces import FaceOptions
from service.api.deps import State
from service.api.image_body import read_images


def images(*fields: str) -> Callable[[Request, State], Awaitable[dict[str, bytes]]]:
    """A dependency that reads these image fields (multipart or base64 JSON) before the sync
    route runs, within the upload limit."""

    async def read(request: Request, state: State) -> dict[str, bytes]:
        return await read_images(
            request, fields, limit_bytes=state.settings.limits.max_upload_bytes
        )

    return read


FileImage = Annotated[dict[str, bytes], Depends(images("file"))]
TwoImages = Annotated[dict[str, bytes], Depends(images("source_image", "target_image"))]

Limit = Annotated[int | None, Query(ge=0, le=10_000, description="0: every face")]
DetProb = Annotated[
    float | None, Query(ge=0.0, le=1.0, description="minimum detection probability")
]
Plugins = Annotated[
    str | None, Query(max_length=200, description="comma-separated: landmarks,calculator,pose")
]
Status = Annotated[bool | None, Query(description="add execution_time and plugins_versions")]
PredictionCount = Annotated[int, Query(ge=1, le=100, description="subjects per face")]


def face_options(
    limit: Limit = None,
    det_prob_threshold: DetProb = None,
    face_plugins: Plugins = None,
    status: Status = None,
) -> FaceOptions:
    """The face services' shared query options, checked."""
    return FaceOptions.parse(limit, det_prob_threshold, face_plugins, status)


Options = Annotated[FaceOptions, Depends(face_options)]


def collection(state: State) -> FaceCollection:
    """The face collection (the whole gallery: see docs/compreface.md on keys)."""
    return FaceCollection(state.gallery)


Collection = Annotated[FaceCollection, Depends(collection)]
