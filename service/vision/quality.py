"""Is it a face, and how good a face for recognition? Pure functions over what the pipeline
already has: the detection, its 5 landmarks, the aligned crop and the recognizer's response.

Quality (each factor in [0, 1], the score their weighted geometric mean, the weights measured
per recognizer by ``bench/quality_erc.py`` and kept in its manifest's ``quality`` section; a
factor of weight 0 is still measured and reported, and named as a likely cause when low):
- ``size``: the inter-ocular distance in image pixels against the recognizer's template (a
  face smaller than the crop it is warped to has lost detail);
- ``sharpness``: the variance of the Laplacian in the crop's centre, on a log scale between a
  blurred and a typical face (``SHARPNESS_LOG10``);
- ``pose``: cos(yaw) * cos(pitch), estimated from where the nose sits between the eyes and
  between the eyes and the mouth, relative to the template;
- ``detection``: the detector's score;
- ``recognizability``: the recognizer's feature norm before normalisation, placed between its
  typical value on non-faces (``quality.norm_floor``: 0) and on clear faces
  (``quality.norm_reference``: 1): how strongly the network responds (magnitude-aware losses
  such as MagFace make this explicit; SFace shows it too).

Validity: the rule in the recognizer manifest's ``validity`` section (chosen by
``bench/face_validity.py``): a detection is refused as a face when the recognizer barely
responds to it and a second detector does not confirm it, more strictly for large detections
(a large, clear face makes the recognizer respond strongly and any detector agree), unless the
detector itself is sure and the recognizer responds at least moderately (``sure_score``: a
dim, tilted real face that YuNet scores a little low).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from service.models import FaceValidity, QualitySpec

FACTORS = ("size", "sharpness", "pose", "detection", "recognizability")
#: log10 of the Laplacian variance in the crop's centre mapped to 0 and to 1: the 1st
#: percentile and the median over the main faces of CelebA-299 (bench/quality_erc.py)
SHARPNESS_LOG10 = (1.61, 2.58)
#: a recognizer whose manifest measured no weights gets SFace's (bench/quality_erc.py): equal
#: weights would let one factor at 0 (a sharpness below CelebA's 1st percentile) zero the score
DEFAULT_WEIGHTS = {
    "size": 0.25,
    "sharpness": 0.0,
    "pose": 0.0,
    "detection": 1.0,
    "recognizability": 1.0,
}
#: a factor below this is named as a likely cause in a low_quality refusal
LOW_FACTOR = 0.5
#: what a user can do about each factor (the low_quality error says it)
FACTOR_ADVICE = {
    "size": "the face is too small in the photo; use a closer or higher-resolution photo",
    "sharpness": "the face is blurred; use a sharper photo",
    "pose": "the head is turned away; use a photo facing the camera",
    "detection": "the detector is unsure this is a face",
    "recognizability": "the recognizer barely responds to this face (occlusion, lighting, "
    "or not a face)",
}


@dataclass(frozen=True)
class Pose:
    """Head pose estimated from 5 landmarks, in degrees (0, 0: frontal)."""

    yaw_deg: float
    pitch_deg: float
    roll_deg: float


@dataclass(frozen=True)
class FaceQuality:
    """A face's quality in [0, 1], its factors, the raw measurements behind them, and whether it
    is a face at all (``valid``; ``validity_reason`` says why not)."""

    score: float
    factors: dict[str, float]
    pose: Pose
    interocular_px: float
    sharpness: float
    feature_norm: float | None
    weights: dict[str, float] = field(default_factory=dict)
    valid: bool = True
    validity_reason: str | None = None

    @property
    def weakest(self) -> str:
        """The factor that pulls the score down most (among those the score weighs)."""
        weighed = [k for k in self.factors if self.weights.get(k, 1.0) > 0] or list(self.factors)
        return min(weighed, key=lambda k: self.factors[k])

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view (the API's ``QualityOut`` has the same fields)."""
        return {
            "score": self.score,
            "factors": dict(self.factors),
            "weights": {k: self.weights.get(k, 1.0) for k in self.factors},
            "weakest": self.weakest,
            "pose": {
                "yaw": self.pose.yaw_deg,
                "pitch": self.pose.pitch_deg,
                "roll": self.pose.roll_deg,
            },
            "interocular_px": self.interocular_px,
            "sharpness": self.sharpness,
            "feature_norm": self.feature_norm,
        }

    @property
    def low_factors(self) -> list[str]:
        """Every factor below ``LOW_FACTOR``, weighed or not (the likely causes)."""
        return [k for k in FACTORS if self.factors.get(k, 1.0) < LOW_FACTOR]


def _nose_ratios(points: np.ndarray) -> tuple[float, float]:
    """Where the nose sits, in the frame where the eyes lie on a horizontal line: across the
    eyes (0 at the left eye, 1 at the right) and down to the mouth (0 at the eyes, 1 at the
    mouth corners' middle)."""
    eye_vec = points[1] - points[0]
    iod = float(np.linalg.norm(eye_vec))
    axis_x = eye_vec / iod
    axis_y = np.array([-axis_x[1], axis_x[0]])  # image y points down: so does this
    rel = points - points[0]
    xs, ys = rel @ axis_x, rel @ axis_y
    mouth = (ys[3] + ys[4]) / 2
    return float(xs[2] / iod), float(ys[2] / mouth) if abs(mouth) > 1e-6 else 0.5


def estimate_pose(landmarks: np.ndarray, template: np.ndarray) -> Pose:
    """Yaw, pitch and roll from 5 landmarks (left eye, right eye, nose, mouth corners).

    Yaw from where the nose sits between the eyes, pitch from where it sits between the eyes
    and the mouth, each compared with the template: asin of twice the offset, so 90 degrees
    when the nose reaches an eye or the mouth; roll is the eye line's angle."""
    pts = np.asarray(landmarks, dtype=np.float64)
    eye_vec = pts[1] - pts[0]
    if float(np.linalg.norm(eye_vec)) < 1e-6:
        return Pose(90.0, 90.0, 0.0)
    roll = math.degrees(math.atan2(eye_vec[1], eye_vec[0]))
    yaw_ratio, pitch_ratio = _nose_ratios(pts)
    yaw0, pitch0 = _nose_ratios(np.asarray(template, dtype=np.float64))
    yaw = math.degrees(math.asin(float(np.clip(2 * (yaw_ratio - yaw0), -1, 1))))
    pitch = math.degrees(math.asin(float(np.clip(2 * (pitch_ratio - pitch0), -1, 1))))
    return Pose(yaw, pitch, roll)


def sharpness_of(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the crop's central 70% (grey), the usual focus measure."""
    h, w = crop.shape[:2]
    mh, mw = int(h * 0.15), int(w * 0.15)
    grey = cv2.cvtColor(np.ascontiguousarray(crop[mh : h - mh, mw : w - mw]), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def recognizability(feature_norm: float, spec: QualitySpec) -> float:
    """The feature norm between a non-face's (0) and a clear face's (1), linear between."""
    top = spec.norm_reference or 1.0
    span = max(top - spec.norm_floor, 1e-6)
    return float(np.clip((feature_norm - spec.norm_floor) / span, 0.0, 1.0))


def _template_iod(template: np.ndarray) -> float:
    t = np.asarray(template, dtype=np.float64)
    return float(np.linalg.norm(t[1] - t[0]))


def assess(
    landmarks: np.ndarray,
    detection_score: float,
    crop: np.ndarray,
    feature_norm: float | None,
    *,
    template: np.ndarray,
    spec: QualitySpec | None = None,
) -> FaceQuality:
    """The quality of one face (validity is decided separately: ``check_validity``)."""
    spec = spec or QualitySpec()
    pts = np.asarray(landmarks, dtype=np.float64)
    iod = float(np.linalg.norm(pts[1] - pts[0]))
    pose = estimate_pose(pts, template)
    sharp = sharpness_of(crop)
    lo, hi = SHARPNESS_LOG10
    factors = {
        "size": float(np.clip(iod / _template_iod(template), 0.0, 1.0)),
        "sharpness": float(np.clip((math.log10(max(sharp, 1e-3)) - lo) / (hi - lo), 0.0, 1.0)),
        "pose": float(
            max(0.0, math.cos(math.radians(pose.yaw_deg)) * math.cos(math.radians(pose.pitch_deg)))
        ),
        "detection": float(np.clip(detection_score, 0.0, 1.0)),
    }
    if feature_norm is not None and spec.norm_reference:
        factors["recognizability"] = recognizability(feature_norm, spec)
    weights = {k: spec.weights.get(k, DEFAULT_WEIGHTS[k]) for k in factors}
    total = sum(weights.values())
    score = math.exp(
        sum(weights[k] * math.log(max(factors[k], 1e-6)) for k in factors) / max(total, 1e-9)
    )
    return FaceQuality(
        score=round(float(score), 4),
        factors={k: round(v, 4) for k, v in factors.items()},
        pose=Pose(round(pose.yaw_deg, 1), round(pose.pitch_deg, 1), round(pose.roll_deg, 1)),
        interocular_px=round(iod, 1),
        sharpness=round(sharp, 1),
        feature_norm=round(feature_norm, 3) if feature_norm is not None else None,
        weights=weights,
    )


def check_validity(
    rule: FaceValidity,
    *,
    size_px: float,
    detection_score: float,
    feature_norm: float | None,
    agreement: Callable[[], float],
) -> str | None:
    """Why a detection is not a face under ``rule``, or None when it is one.

    ``agreement`` gives the second detector's best score on the same face (0 when it finds
    none); it is called only when the feature norm leaves the question open, so clear faces
    never pay for the second detection."""
    if feature_norm is None:
        return None
    large = size_px >= rule.large_face_px
    band = rule.large if large else rule.small
    if (
        feature_norm >= band.max_norm
        or detection_score < band.min_score
        or band.sure(detection_score, feature_norm)
        or agreement() >= band.max_agreement
    ):
        return None
    if large:
        return (
            f"not a face: a {size_px:.0f}-px detection the recognizer barely responds to "
            f"(feature norm {feature_norm:.2f} < {band.max_norm}) and the second "
            f"detector does not confirm"
        )
    return (
        f"not a face: the recognizer barely responds (feature norm {feature_norm:.2f} < "
        f"{band.max_norm}) and the second detector does not confirm"
    )
