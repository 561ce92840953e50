"""How an identify answer is decided: per subject, with an ambiguity margin.

The gallery ranks subjects by their best face (``Gallery.search``: top-k distinct subjects).
A face's answer is decided on the subjects, not on single faces:

- ``unknown``: the best subject's best face is below the threshold (the calibrated cosine
  for the identify FAR, or the caller's threshold);
- ``ambiguous``: it reaches the threshold, but the runner-up subject is within ``margin`` of it
  (cosine): two people fit about equally well, so neither is named, and both are returned;
- ``match``: otherwise, the best subject.

Before that, "not this person" (negative examples kept per subject, ``Gallery.add_negative``):
a candidate subject is **vetoed**, dropped from the candidates, when the probe is at least as
close to one of its negatives as to its best face (``is_vetoed``: n >= s, both cosines, same
model); the answer falls to the next subject, or to unknown, and the response lists the vetoed
subjects with both cosines (``veto``, applied by ``Recognition.rank``).

Each candidate says how many of its faces agree (reach the threshold): evidence a reviewer can
weigh, not part of the rule. The score is the best face's (not a fusion of a subject's faces):
chosen by measurement in docs/benchmarks.md, "Open-set identification", where also the margin's
cost in detection rate is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import numpy as np

Decision = Literal["match", "ambiguous", "unknown"]


@dataclass(frozen=True)
class SubjectCandidate:
    """A subject resembling the probe: its best face and how many of its faces agree."""

    subject_id: str
    name: str
    face_id: int
    score: float
    agreeing: int


@dataclass(frozen=True)
class Answer:
    """The decision for one face, the subject matched, or the two that were too close."""

    decision: Decision
    match: SubjectCandidate | None
    contenders: list[SubjectCandidate]


def decide(candidates: list[SubjectCandidate], threshold: float, margin: float) -> Answer:
    """The answer for one face from its candidates (best first); ``margin`` 0: never
    ambiguous."""
    if not candidates or candidates[0].score < threshold:
        return Answer("unknown", None, [])
    best = candidates[0]
    if len(candidates) > 1 and best.score - candidates[1].score < margin:
        return Answer("ambiguous", None, [best, candidates[1]])
    return Answer("match", best, [])


class Scored(Protocol):
    """What the veto reads of a candidate: its subject and its best face's cosine."""

    @property
    def subject_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def score(self) -> float: ...


C = TypeVar("C", bound=Scored)


@dataclass(frozen=True)
class Vetoed:
    """A candidate subject dropped by its negatives: the probe's cosine to its best face
    (``score``) and to the nearest of its negative examples (``negative``)."""

    subject_id: str
    name: str
    score: float
    negative: float


def is_vetoed(score: float, negative: float) -> bool:
    """The rule, in one place: a subject is vetoed when the probe is at least as close to
    something the user said is not that subject (``negative``, the highest cosine to its
    negatives) as to the subject itself (``score``, its best face's cosine)."""
    return negative >= score


def veto(
    probe: np.ndarray, candidates: Sequence[C], negatives: Mapping[str, np.ndarray]
) -> tuple[list[C], list[Vetoed]]:
    """The candidates that stand (in their order) and the ones vetoed, for one probe (a unit
    vector) and the negatives (unit rows, of the probe's model) of the candidates' subjects."""
    kept: list[C] = []
    vetoed: list[Vetoed] = []
    for c in candidates:
        rows = negatives.get(c.subject_id)
        if rows is not None and len(rows):
            nearest = float(np.max(rows @ probe))
            if is_vetoed(c.score, nearest):
                vetoed.append(Vetoed(c.subject_id, c.name, c.score, nearest))
                continue
        kept.append(c)
    return kept, vetoed


@dataclass(frozen=True)
class LooksLike:
    """A cluster resembles a subject of the gallery: the subject most of its checked members
    are matched to (each decided as an identify decides), the best cosine among them, how many
    of the ``checked`` members agree, and the calibrated FAR of that cosine (``far``: the
    strictest calibrated operating point it reaches, None without a calibration)."""

    subject_id: str
    name: str
    similarity: float
    agreeing: int
    checked: int
    far: float | None
    threshold: float
    source: str


def vote(answers: Sequence[Answer]) -> tuple[SubjectCandidate, int] | None:
    """The subject the most of a cluster's members' answers match (ties: the higher cosine),
    with its best-scoring match and the number of members matched to it; None when no member
    is a match (unknown or ambiguous)."""
    tally: dict[str, list[SubjectCandidate]] = {}
    for a in answers:
        if a.match is not None:
            tally.setdefault(a.match.subject_id, []).append(a.match)
    if not tally:
        return None
    matches = max(tally.values(), key=lambda m: (len(m), max(c.score for c in m)))
    return max(matches, key=lambda c: c.score), len(matches)
