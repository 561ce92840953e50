"""5-point similarity alignment to a template (the ArcFace 112x112 one by default).

Pure functions so that training data preparation and serving produce the same crops.
"""

from __future__ import annotations

import cv2
import numpy as np

# The 5-point ArcFace template for a 112x112 crop: left eye, right eye, nose, mouth corners.
ARCFACE_TEMPLATE_112: list[list[float]] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
]


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) mapping src to dst.

    Umeyama's closed form; returns a (2, 3) matrix for cv2.warpAffine. Raises ValueError for
    degenerate points (all equal), which cannot define a scale.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError("need two matching sets of at least 2 points")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var < 1e-12:
        raise ValueError("degenerate landmarks: all points coincide")
    cov = dst_c.T @ src_c / len(src)  # (2, 2)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0  # no reflections: a mirrored face is another face
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]]).astype(np.float64)


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    *,
    template: np.ndarray | list[list[float]] = ARCFACE_TEMPLATE_112,
    size: tuple[int, int] = (112, 112),
) -> np.ndarray:
    """Warp the face with these 5 landmarks onto the template; returns an (h, w, 3) uint8 crop."""
    matrix = estimate_similarity(np.asarray(landmarks), np.asarray(template, dtype=np.float64))
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
