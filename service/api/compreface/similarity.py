"""CompreFace's 0..1 ``similarity`` from our cosine, through the recognizer's calibration.

CompreFace users (and integrations such as Double Take: a match at 60%, unknown below 40%, by
default; CompreFace's own docs suggest 0.85 for strict matching) threshold ``similarity``
directly, so the scale must mean a false-accept rate whatever the recognizer. The mapping pins
similarity anchors to the calibrated cosine thresholds of the active recognizer's manifest
(measured over every impostor pair of its calibration set) and is linear in the cosine between
anchors, so it is monotone and invertible:

==========  ======================================
similarity  cosine at this FAR (one comparison)
==========  ======================================
0.00        -1 (opposite)
0.25        FAR 1e-1
0.40        FAR 1e-2   (Double Take's "unknown" floor)
0.60        FAR 1e-3   (Double Take's "match")
0.75        FAR 1e-4
0.85        FAR 1e-5   (CompreFace's usual strict threshold)
0.92        FAR 1e-6
1.00        1 (identical)
==========  ======================================

A recognizer without calibration falls back to ``(cosine + 1) / 2`` (said in the docs).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from service.models import Manifest

#: similarity at each calibrated FAR (the manifest's keys are written like "1e-03")
ANCHORS: dict[float, float] = {
    1e-1: 0.25,
    1e-2: 0.40,
    1e-3: 0.60,
    1e-4: 0.75,
    1e-5: 0.85,
    1e-6: 0.92,
}


@dataclass(frozen=True)
class SimilarityScale:
    """A piecewise-linear, increasing map between cosine and CompreFace similarity."""

    cosines: tuple[float, ...]
    similarities: tuple[float, ...]

    @classmethod
    def for_manifest(cls, manifest: Manifest) -> SimilarityScale:
        """The scale of a recognizer, from its calibration's thresholds by FAR."""
        points = {-1.0: 0.0, 1.0: 1.0}
        calibration = manifest.calibration
        by_far = calibration.thresholds_by_far if calibration is not None else {}
        for key, cosine in by_far.items():
            similarity = ANCHORS.get(float(key))
            if similarity is not None and -1.0 < cosine < 1.0:
                points[float(cosine)] = similarity
        cosines = sorted(points)
        sims = [points[c] for c in cosines]
        if any(b <= a for a, b in itertools.pairwise(sims)):
            # a calibration whose thresholds do not fall as the FAR grows: refuse to guess
            cosines, sims = [-1.0, 1.0], [0.0, 1.0]
        return cls(tuple(cosines), tuple(sims))

    def similarity(self, cosine: float) -> float:
        """CompreFace similarity of a cosine (rounded to 5 places, as CompreFace does)."""
        value = float(np.interp(float(cosine), self.cosines, self.similarities))
        return round(min(1.0, max(0.0, value)), 5)

    def cosine(self, similarity: float) -> float:
        """The cosine a similarity threshold stands for (the inverse map)."""
        return float(np.interp(float(similarity), self.similarities, self.cosines))
