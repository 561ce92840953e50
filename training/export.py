"""ONNX export of a trained backbone, a parity check against PyTorch, and a registry manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image

from service.models import InputSpec, Manifest, Thresholds, save_manifest
from service.vision.alignment import ARCFACE_TEMPLATE_112
from training.backbones import create_backbone
from training.data import MEAN, STD, to_tensor

PARITY_MIN_COSINE = 0.9999


def export_onnx(backbone: torch.nn.Module, path: Path, opset: int = 17) -> None:
    """Export (B, 3, 112, 112) -> (B, D) with a dynamic batch axis, then onnx.checker."""
    backbone.eval()
    dummy = torch.randn(2, 3, 112, 112)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        backbone,
        (dummy,),
        str(path),
        input_names=["input"],
        output_names=["embedding"],
        dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)))


def parity_check(backbone: torch.nn.Module, path: Path, crops: list[np.ndarray]) -> float:
    """Lowest cosine between ORT and PyTorch normalised embeddings on real aligned faces.

    Raises AssertionError when it is below 0.9999.
    """
    backbone.eval()
    x = torch.stack([to_tensor(c) for c in crops])
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
    backbone = create_backbone(
        config["model"]["backbone"],
        embedding_dim=config["model"]["embedding_dim"],
        **({"width": width} if width else {}),
    )
    backbone.load_state_dict(state["backbone"])
    model_dir = models_dir / name
    onnx_path = model_dir / f"{name}.onnx"
    export_onnx(backbone, onnx_path)
    worst = parity_check(backbone, onnx_path, _crops(parity_images))
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    head = config["head"]
    manifest = Manifest(
        name=name,
        task="recognition",
        file=onnx_path.name,
        sha256=hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        licence=data_licence or "inherits the licence of its training data (see training.data)",
        description=f"{config['model']['backbone']} trained with {head['preset']} by MarginFace "
        f"(loss study, {state['step']} steps on CelebA-299)",
        source={"kind": "training", "run_dir": str(run_dir), "step": state["step"]},
        input=InputSpec(width=112, height=112, color_order="RGB", mean=(MEAN,) * 3, std=(STD,) * 3),
        alignment_template=ARCFACE_TEMPLATE_112,
        embedding_dim=config["model"]["embedding_dim"],
        thresholds=Thresholds(
            cosine=0.3, source="placeholder until `marginface calibrate` measures this model"
        ),
        training={
            "backbone": config["model"]["backbone"] + (f" (width {width})" if width else ""),
            "head": head,
            "data": {k: v for k, v in config["data"].items() if k in ("root", "rec")},
            "data_licence": data_licence,
            "steps": state["step"],
            "num_classes": state["num_classes"],
            "metrics": metrics,
            "parity_min_cosine": worst,
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
        f"m3={head.get('m3')}, scale={head.get('scale')}; None = preset default) |",
        f"| embedding | {manifest.embedding_dim}-d, RGB, (x - 127.5) / 127.5, ArcFace template |",
        f"| training data | {t.get('data')} ({t.get('num_classes')} identities) |",
        f"| steps | {t.get('steps')} |",
        f"| LFW 10-fold accuracy (flip TTA, during training) | {metrics.get('lfw_accuracy')} |",
        f"| LFW TAR at FAR 1e-2 | {metrics.get('lfw_tar_at_far_1e-2')} |",
        f"| ONNX vs PyTorch parity (lowest cosine) | {t.get('parity_min_cosine')} |",
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
