"""What a gallery holds, whichever backend stores it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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


#: where a negative example came from: an identify probe's embedding (no photo is kept), or a
#: face (enrolled in the gallery, or one of a cluster job)
NegativeSource = Literal["probe", "face"]


@dataclass(frozen=True)
class Negative:
    """A face the user said is not this subject ("not this person"): kept as an embedding of
    one model (compared only with probes of that model), erased with the subject, and with
    the gallery face it was copied from (``face_id``)."""

    id: int
    subject_id: str
    model_id: str
    source: NegativeSource
    face_id: int | None
    created_at: float
    model_sha256: str = ""
