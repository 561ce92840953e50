"""Faces in CompreFace's shape: boxes, face plugins, the query options every face service
takes (``limit``, ``det_prob_threshold``, ``face_plugins``, ``status``), and image ids."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from service.api.compreface.schemas import BoxOut, CompreFacePose, FaceResult
from service.api.compreface.similarity import SimilarityScale
from service.errors import FaceNotFound, InvalidRequest
from service.recognition import Recognition
from service.vision.pipeline import Face

#: plugins with an honest equivalent here
SUPPORTED_PLUGINS = ("landmarks", "calculator", "pose")
#: CompreFace plugins we have no model for: refused, never faked
REFUSED_PLUGINS = {
    "age": "there is no age model in MarginFace",
    "gender": "there is no gender model in MarginFace",
    "mask": "there is no mask model in MarginFace",
}


class UnsupportedPlugin(InvalidRequest):
    """A face plugin MarginFace does not have (CompreFace's age, gender, mask)."""

    code = "unsupported_plugin"


@dataclass(frozen=True)
class FaceOptions:
    """The query options of CompreFace's face services."""

    limit: int = 0
    det_prob_threshold: float | None = None
    plugins: tuple[str, ...] = ()
    status: bool = False

    @classmethod
    def parse(
        cls,
        limit: int | None,
        det_prob_threshold: float | None,
        face_plugins: str | None,
        status: bool | None,
    ) -> FaceOptions:
        """Check and keep the options; UnsupportedPlugin names each plugin refused and why."""
        plugins = [p.strip() for p in (face_plugins or "").split(",") if p.strip()]
        refused = [f"{p} ({REFUSED_PLUGINS[p]})" for p in plugins if p in REFUSED_PLUGINS]
        unknown = [p for p in plugins if p not in REFUSED_PLUGINS and p not in SUPPORTED_PLUGINS]
        if refused or unknown:
            parts = []
            if refused:
                parts.append("face plugin(s) not available: " + ", ".join(refused))
            if unknown:
                parts.append("unknown face plugin(s): " + ", ".join(unknown))
            raise UnsupportedPlugin(
                "; ".join(parts) + f"; available: {', '.join(SUPPORTED_PLUGINS)}",
                available=list(SUPPORTED_PLUGINS),
            )
        return cls(limit or 0, det_prob_threshold, tuple(dict.fromkeys(plugins)), bool(status))

    def select(self, faces: list[Face]) -> list[Face]:
        """Faces at or above the detection threshold, the biggest first, at most ``limit``."""
        kept = [
            f
            for f in faces
            if self.det_prob_threshold is None or f.score >= self.det_prob_threshold
        ]
        kept.sort(key=lambda f: f.area, reverse=True)
        return kept[: self.limit] if self.limit > 0 else kept


def present(face: Face, options: FaceOptions, elapsed_ms: float) -> FaceResult:
    """A face with the plugins asked for."""
    x1, y1, x2, y2 = (round(float(v)) for v in face.box)
    result = FaceResult(
        box=BoxOut(probability=round(float(face.score), 5), x_min=x1, y_min=y1, x_max=x2, y_max=y2)
    )
    if "landmarks" in options.plugins:
        result.landmarks = [[round(float(x)), round(float(y))] for x, y in face.landmarks]
    if "calculator" in options.plugins:
        result.embedding = [float(v) for v in face.embedding]
    if "pose" in options.plugins and face.quality is not None:
        pose = face.quality.pose
        result.pose = CompreFacePose(
            pitch=round(pose.pitch_deg, 2), roll=round(pose.roll_deg, 2), yaw=round(pose.yaw_deg, 2)
        )
    if options.status:
        result.execution_time = {"pipeline": round(elapsed_ms, 1)}
    return result


def plugins_versions(rec: Recognition, options: FaceOptions) -> dict[str, str] | None:
    """Which models answered (only with ``status=true``, as CompreFace does)."""
    if not options.status:
        return None
    versions = {
        "detector": f"marginface.{rec.pipeline.detector.manifest.name}",
        "calculator": f"marginface.{rec.recognizer.name}",
    }
    for plugin in options.plugins:
        if plugin == "landmarks":
            versions[plugin] = f"marginface.{rec.pipeline.detector.manifest.name}"
        elif plugin == "pose":
            versions[plugin] = "marginface.quality.landmark_pose"
    return versions


_SCALES: dict[str, SimilarityScale] = {}  # by model id: a manifest's calibration is fixed


def scale(recognition: Recognition) -> SimilarityScale:
    """The similarity scale of the running recognizer."""
    manifest = recognition.recognizer
    found = _SCALES.get(manifest.model_id)
    if found is None:
        found = _SCALES[manifest.model_id] = SimilarityScale.for_manifest(manifest)
    return found


def image_id(face_id: int) -> str:
    """A face id as CompreFace's image id: a UUID that carries the integer."""
    return str(uuid.UUID(int=face_id))


def face_id(image_id: str) -> int:
    """The face id of an image id; FaceNotFound for anything else."""
    try:
        value = uuid.UUID(image_id).int
    except ValueError as exc:
        raise FaceNotFound(f"image id {image_id!r} is incorrect: not one of ours") from exc
    if not 1 <= value <= 2**63 - 1:
        raise FaceNotFound(f"image id {image_id!r} is incorrect: not one of ours")
    return value
