"""What a gallery holds, whichever backend stores it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Subject:
    """A person in the gallery."""

    id: str
    name: str
    metadata: dict[str, Any]
    created_at: float
    face_count: int = 0


@dataclass(frozen=True)
class FaceRecord:
    """One enrolled face (its embedding is loaded only when asked for)."""

    id: int
    subject_id: str
    model_id: str
    box: list[float]
    det_score: float
    image_sha256: str
    created_at: float


@dataclass(frozen=True)
class NewFace:
    """A face to enroll."""

    embedding: np.ndarray
    box: tuple[float, float, float, float]
    det_score: float
    image_sha256: str
