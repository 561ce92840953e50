"""ONNX export of a trained backbone, a parity check against PyTorch, and a registry manifest.

The export uses torch's current exporter (``torch.export`` + onnxscript, ``dynamo=True``); the
legacy TorchScript exporter, which torch deprecates, is used only when that fails, with a
warning that says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image

from service.models import InputSpec, Manifest, Thresholds, save_manifest
from service.vision.alignment import ARCFACE_TEMPLATE_112
from training.config import ModelConfig
from training.data import DEFAULT_NORMALISATION, Normalisation
from training.pretrained import backbone_for

log = logging.getLogger(__name__)
PARITY_MIN_COSINE = 0.9999


def export_onnx(backbone: torch.nn.Module, path: Path, opset: int = 18) -> str:
    """Export (B, 3, 112, 112) -> (B, D) with a dynamic batch axis, then onnx.checker.

    Returns which exporter wrote the file ("dynamo", or "legacy" after a warning)."""
    backbone.eval()
    dummy = torch.randn(2, 3, 112, 112)
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = io.StringIO()  # the exporter's progress lines ("[torch.onnx] Obtain model graph")
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(noise),
            contextlib.redirect_stderr(noise),
        ):
            warnings.simplefilter("ignore")  # torch.export's notes about its own internals
            torch.onnx.export(
                backbone,
                (dummy,),
                str(path),
                input_names=["input"],
                output_names=["embedding"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                opset_version=opset,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        exporter = "dynamo"
        log.debug("torch.onnx.export said: %s", noise.getvalue())
    except Exception as exc:  # the exporter raises many kinds; the legacy path is the fallback
        log.warning(
            "torch's ONNX exporter (dynamo) failed (%s: %s); falling back to the deprecated "
            "TorchScript exporter",
            exc.__class__.__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                backbone,
                (dummy,),
                str(path),
                input_names=["input"],
                output_names=["embedding"],
                dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        exporter = "legacy"
    _inline_weights(path)
    onnx.checker.check_model(onnx.load(str(path)))
    return exporter


def _inline_weights(path: Path) -> None:
    """One file: the dynamo exporter puts the weights of all but tiny models in a side file
    (``<name>.onnx.data``) that the manifest's sha256, which names one file, would not cover."""
    model = onnx.load(str(path))  # reads any external data into the tensors
    sidecars = {
        path.parent / entry.value
        for tensor in model.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    sidecars |= set(path.parent.glob(path.name + ".data"))
    if not sidecars:
        return
    from onnx.external_data_helper import convert_model_from_external_data

    convert_model_from_external_data(model)
    tmp = path.with_suffix(".onnx.part")
    onnx.save_model(model, str(tmp), save_as_external_data=False)
    tmp.replace(path)
    for sidecar in sidecars:
        sidecar.unlink(missing_ok=True)


def parity_check(
    backbone: torch.nn.Module,
    path: Path,
    crops: list[np.ndarray],
    norm: Normalisation = DEFAULT_NORMALISATION,
) -> float:
    """Lowest cosine between ORT and PyTorch normalised embeddings on real aligned faces.

    Raises AssertionError when it is below 0.9999.
    """
    backbone.eval()
    x = torch.stack([norm.apply(c) for c in crops])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(backbone(x), dim=1).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    worst = float((ref * got).sum(axis=1).min())
    if worst < PARITY_MIN_COSINE:
        raise AssertionError(f"ONNX Runtime and PyTorch disagree: lowest cosine {worst:.6f}")
    return worst


def _crops(folder: Path | None, limit: int = 16) -> list[np.ndarray]:
    if folder is None:
        raise ValueError("the parity check needs a folder of real aligned faces (--parity-images)")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".png", ".jpeg"})
    if not paths:
        raise ValueError(f"no images under {folder}")
    return [np.asarray(Image.open(p).convert("RGB").resize((112, 112))) for p in paths[:limit]]


def export_run(
    run_dir: Path,
    models_dir: Path,
    name: str,
    *,
    parity_images: Path | None,
    data_licence: str = "",
) -> Manifest:
    """Export a run's checkpoint to ``models_dir/name`` with a manifest the service reads."""
    state: dict[str, Any] = torch.load(
        run_dir / "checkpoint.pt", map_location="cpu", weights_only=False
    )
    config = state["config"]
    width = config["model"].get("width") or 0
    model_config = ModelConfig(
        **{k: v for k, v in config["model"].items() if k in ModelConfig.__dataclass_fields__}
    )
    backbone, norm, init = backbone_for(model_config)
    backbone.load_state_dict(state["backbone"])
    model_dir = models_dir / name
    onnx_path = model_dir / f"{name}.onnx"
    exporter = export_onnx(backbone, onnx_path)
    crops = _crops(parity_images)
    worst = parity_check(backbone, onnx_path, crops, norm)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    head = config["head"]
    data = config["data"]
    evaluation = None
    if data.get("val_pairs"):
        evaluation = {
            "pairs_file": data["val_pairs"],
            "pairs": int(metrics.get("lfw_pairs") or 0),
            "protocol": "LFW View-2 10-fold: threshold chosen on 9 folds, accuracy on the 10th; "
            "face nearest the image centre aligned by the service pipeline; flip-averaged "
            "embeddings; measured at the last training step",
        }
    if init is not None:
        input_spec, template = init.input, init.alignment_template or ARCFACE_TEMPLATE_112
        described = f"{init.name} fine-tuned with {head['preset']} by MarginFace"
    else:
        input_spec = InputSpec(
            width=112, height=112, color_order="RGB", mean=norm.mean, std=norm.std
        )
        template = ARCFACE_TEMPLATE_112
        described = f"{config['model']['backbone']} trained with {head['preset']} by MarginFace"
    manifest = Manifest(
        name=name,
        task="recognition",
        file=onnx_path.name,
        sha256=hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        licence=data_licence or "inherits the licence of its training data (see training.data)",
        description=f"{described} ({state['step']} steps on {state['num_classes']} identities)",
        source={"kind": "training", "run_dir": str(run_dir), "step": state["step"]},
        input=input_spec,
        alignment_template=template,
        embedding_dim=config["model"]["embedding_dim"],
        thresholds=Thresholds(
            cosine=0.3, source="placeholder until `marginface calibrate` measures this model"
        ),
        training={
            "backbone": (f"{init.name} (imported from ONNX)" if init is not None else "")
            or config["model"]["backbone"] + (f" (width {width})" if width else ""),
            "head": head,
            "scale": metrics.get("scale"),
            "data": {k: v for k, v in data.items() if k in ("root", "rec", "max_identities")},
            "data_licence": data_licence,
            "steps": state["step"],
            "num_classes": state["num_classes"],
            "metrics": metrics,
            "evaluation": evaluation,
            "exporter": exporter,
            "parity_min_cosine": worst,
            "parity_faces": len(crops),
            "parity_required": PARITY_MIN_COSINE,
        },
    )
    save_manifest(model_dir, manifest)
    write_model_card(model_dir, manifest)
    return manifest


def write_model_card(model_dir: Path, manifest: Manifest) -> Path:
    """A short human-readable card: what, how trained, how good, under which licence."""
    t = manifest.training or {}
    metrics = t.get("metrics", {})
    head = t.get("head", {})
    evaluation = t.get("evaluation") or {}
    spec = manifest.input
    lfw_row = (
        f"| LFW 10-fold accuracy | {metrics.get('lfw_accuracy')} "
        f"± {metrics.get('lfw_accuracy_std')} on {evaluation.get('pairs')} pairs of "
        f"`{evaluation.get('pairs_file')}`: "
        f"{evaluation.get('protocol')} |"
        if evaluation
        else "| LFW 10-fold accuracy | not measured during training |"
    )
    lines = [
        f"# {manifest.name}",
        "",
        f"{manifest.description}.",
        "",
        "| | |",
        "|---|---|",
        f"| model id | `{manifest.model_id}` |",
        f"| backbone | {t.get('backbone')} |",
        f"| head | {head.get('preset')} (m1={head.get('m1')}, m2_rad={head.get('m2_rad')}, "
        f"m3={head.get('m3')}; None = preset default), scale {t.get('scale')} "
        f"({'set' if head.get('scale') else 'derived from the class count'}) |",
        f"| embedding | {manifest.embedding_dim}-d, {spec.color_order}, (x - {spec.mean[0]}) / "
        f"{spec.std[0]}, ArcFace template |",
        f"| training data | {t.get('data')} ({t.get('num_classes')} identities) |",
        f"| steps | {t.get('steps')} |",
        lfw_row,
        f"| LFW TAR at FAR 1e-2 (same pairs) | {metrics.get('lfw_tar_at_far_1e-2')} |",
        f"| open-set DIR at FPIR 1e-2 | {metrics.get('openset_dir_at_fpir_1e-2')} |",
        f"| ONNX exporter | {t.get('exporter')} |",
        f"| ONNX vs PyTorch parity | lowest cosine {t.get('parity_min_cosine')} over "
        f"{t.get('parity_faces')} real aligned faces (required: >= {PARITY_MIN_COSINE}) |",
        f"| licence | {manifest.licence} |",
        "",
        "The licence of a trained model follows its training data: a model trained on CelebA",
        "may be used for non-commercial research only. Thresholds are placeholders until",
        "`marginface calibrate --model " + manifest.name + "` measures them.",
        "",
    ]
    path = model_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
