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
    #: the full sha256 of the weights that made its embedding ("" where not recorded)
    model_sha256: str = ""


@dataclass(frozen=True)
class NewFace:
    """A face to enroll."""

    embedding: np.ndarray
    box: tuple[float, float, float, float]
    det_score: float
    image_sha256: str


@dataclass(frozen=True)
class Quarantined:
    """A stored face whose embedding failed its checksum or unit-norm check: kept for the
    operator to inspect or delete, never compared or returned."""

    face_id: int
    subject_id: str
    reason: str
    at: float


@dataclass(frozen=True)
class IndexCheck:
    """How the derived index compares with the store (what reconcile or a rebuild repairs)."""

    faces: int  # usable faces in the store (quarantined ones excluded)
    indexed: int
    missing: int  # in the store, not in the index
    extra: int  # in the index, not in the store

    @property
    def consistent(self) -> bool:
        """Whether the index holds exactly the store's usable faces."""
        return self.missing == 0 and self.extra == 0 and self.faces == self.indexed
