"""How an identify answer is decided: per subject, with an ambiguity margin.

The gallery ranks subjects by their best face (``Gallery.search``: top-k distinct subjects).
A face's answer is decided on the subjects, not on single faces:

- ``unknown``: the best subject's best face is below the threshold (the calibrated cosine
  for the identify FAR, or the caller's threshold);
- ``ambiguous``: it reaches the threshold, but the runner-up subject is within ``margin`` of it
  (cosine): two people fit about equally well, so neither is named, and both are returned;
- ``match``: otherwise, the best subject.

Each candidate says how many of its faces agree (reach the threshold): evidence a reviewer can
weigh, not part of the rule. The score is the best face's (not a fusion of a subject's faces):
chosen by measurement in docs/benchmarks.md, "Open-set identification", where also the margin's
cost in detection rate is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
