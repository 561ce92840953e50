"""``marginface calibrate | eval lfw | eval pairs | eval bin | eval write-bin | eval identify``:
the evaluation protocols through the full pipeline (their arithmetic lives in
``service.evaluation`` and ``service.calibration``, the .bin format in ``service.bin_dataset``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.cli import bin_commands
from service.cli.common import (
    Subcommands,
    add_common,
    emit,
    existing,
    settings_from,
    with_recognizer,
)


def register(sub: Subcommands) -> None:
    """Add the commands."""
    calibrate = sub.add_parser("calibrate", help="write thresholds by FAR into a model's manifest")
    calibrate.add_argument("--model", help="recognizer to calibrate (default: the configured one)")
    calibrate.add_argument("--images", required=True, help="image root (LFW layout)")
    calibrate.add_argument("--pairs", required=True, help="pairs file (LFW pairs.txt format)")
    calibrate.add_argument("--dataset", help="how the manifest names the data")
    calibrate.add_argument(
        "--all-cross-identity",
        action="store_true",
        help="FAR thresholds from every pair of different people among the images (folder "
        "name = identity): supports FARs down to 1e-6 on LFW",
    )
    calibrate.set_defaults(func=cmd_calibrate)
    add_common(calibrate)

    evaluate = sub.add_parser("eval", help="evaluation protocols through the full pipeline")
    esub = evaluate.add_subparsers(dest="eval_command", required=True)
    lfw = esub.add_parser("lfw", help="LFW View-2 10-fold protocol")
    lfw.add_argument("--images", required=True, help="LFW's image root (one folder per person)")
    lfw.add_argument("--pairs", required=True, help="LFW's pairs.txt (View 2, 10 folds)")
    lfw.set_defaults(func=cmd_eval_lfw)
    pairs = esub.add_parser("pairs", help="a CSV of image_a,image_b,same")
    pairs.add_argument(
        "--csv", required=True, help="image_a,image_b,same rows; paths relative to the CSV"
    )
    pairs.set_defaults(func=cmd_eval_pairs)
    for p in (lfw, pairs):
        p.add_argument("--model", help="recognizer (default: the configured one)")
        p.add_argument("--flip", action="store_true", help="test-time flip: f(x) + f(flip(x))")
        p.add_argument(
            "--face",
            choices=("central", "choice"),
            default="central",
            help="which face of an image: nearest the centre (the protocol) or the one verify "
            "uses (validity, quality, size)",
        )
        p.add_argument("--out", default="var/eval", help="folder for report.json and roc.png")
    binary, write_bin = bin_commands.register(esub)
    ident = esub.add_parser("identify", help="open-set identification")
    # --photos, not --gallery: everywhere else --gallery names a gallery's folder (the old name
    # is still accepted)
    ident.add_argument(
        "--photos", "--gallery", dest="photos", required=True,
        help="photos, a folder per person, to enroll (--gallery: its old name)",
    )  # fmt: skip
    ident.add_argument("--probes", help="folder per person to search (else split --photos)")
    ident.add_argument(
        "--enrolled-people", type=int, default=12, help="people enrolled (the rest are strangers)"
    )
    ident.add_argument(
        "--gallery-photos", type=int, default=5, help="photos enrolled per enrolled person"
    )
    ident.add_argument(
        "--probes-per-person", type=int, default=20, help="photos searched for, per person"
    )
    ident.add_argument("--aligned", action="store_true", help="photos are aligned 112x112 crops")
    ident.add_argument("--model", help="recognizer (default: the configured one)")
    ident.set_defaults(func=cmd_eval_identify)
    for p in (lfw, pairs, ident, binary, write_bin):
        add_common(p)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure thresholds by FAR on labelled pairs and write them into the model's manifest."""
    from service.calibration import calibrate, score_pairs
    from service.evaluation import read_lfw_pairs
    from service.models import Thresholds, load_manifest, save_manifest
    from service.recognition import build_pipeline

    settings = with_recognizer(settings_from(args), args.model)
    pipeline = build_pipeline(settings, batching=False)
    pairs = read_lfw_pairs(existing(args.pairs), existing(args.images))
    result = score_pairs(pipeline, pairs, progress=not args.json)
    dataset = args.dataset or f"{Path(args.pairs).name} ({Path(args.images).parent.name})"
    calibration = calibrate(result, dataset, all_cross_identity=args.all_cross_identity)
    model_dir = settings.models_dir / settings.embedder.model
    manifest = load_manifest(model_dir)
    best = calibration.best_accuracy_threshold
    updated = manifest.model_copy(
        update={
            "calibration": calibration,
            "thresholds": Thresholds(
                cosine=best if best is not None else manifest.thresholds.cosine,  # type: ignore[union-attr]
                source=f"calibration on {dataset}: best accuracy threshold over "
                f"{calibration.pairs} pairs",
            ),
        }
    )
    save_manifest(model_dir, updated)
    payload = {"model": manifest.name, "calibration": calibration.model_dump()}
    text = json.dumps(payload, indent=2)
    emit(args, payload, text)
    return 0


def _pair_report(args: argparse.Namespace, pairs: list[Any], name: str) -> dict[str, Any]:
    """Score pairs through the full pipeline, report, and draw the ROC."""
    from service.calibration import score_pairs
    from service.evaluation import accuracy_at, verification_report
    from service.plots import draw_roc
    from service.recognition import build_pipeline

    settings = with_recognizer(settings_from(args), args.model)
    if args.flip:
        settings = settings.model_copy(
            update={"embedder": settings.embedder.model_copy(update={"flip_tta": True})}
        )
    pipeline = build_pipeline(settings, batching=False)
    result = score_pairs(pipeline, pairs, progress=not args.json, pick=args.face)
    report = verification_report(result.scores, result.same, result.folds)
    manifest = pipeline.embedder.manifest
    report.update(
        {
            "dataset": name,
            "model_id": manifest.model_id,
            "flip_tta": args.flip,
            "face": args.face,
            "images": result.images,
            "images_without_face": len(result.no_face),
            "images_via_fallback_detection": len(result.fallback_detections),
            "no_face_policy": "central face; if none, a second detection pass (score 0.2, "
            "upscaled); if still none, the pair scores -1 (counted above)",
        }
    )
    if manifest.thresholds is not None:
        t = manifest.thresholds.cosine
        report["manifest_threshold"] = {
            "value": t,
            "accuracy": accuracy_at(result.scores, result.same, t),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    draw_roc({manifest.name: (result.scores, result.same)}, out / "roc.png")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    report["roc_png"] = str(out / "roc.png")
    return report


def cmd_eval_lfw(args: argparse.Namespace) -> int:
    """LFW View-2 protocol through the full pipeline."""
    from service.evaluation import read_lfw_pairs

    pairs = read_lfw_pairs(existing(args.pairs), existing(args.images))
    report = _pair_report(args, pairs, f"LFW {Path(args.pairs).name}")
    mean, std = report["kfold_accuracy_mean"], report["kfold_accuracy_std"]
    text = (
        f"LFW 10-fold accuracy {mean:.4f} ± {std:.4f}, EER {report['eer']:.4f}, "
        f"AUC {report['roc_auc']:.5f}; report in {args.out}"
    )
    emit(args, report, text)
    return 0


def cmd_eval_pairs(args: argparse.Namespace) -> int:
    """Any CSV of image_a,image_b,same."""
    from service.calibration import read_pairs_csv

    report = _pair_report(args, read_pairs_csv(existing(args.csv)), Path(args.csv).name)
    best, at = report["best_threshold_accuracy"], report["best_threshold"]
    text = f"best-threshold accuracy {best:.4f} at {at:.4f}"
    emit(args, report, text)
    return 0


def cmd_eval_identify(args: argparse.Namespace) -> int:
    """Open-set identification on folder-per-person photos (``folder_identification``), each
    photo decoded within the pixel limit and its face chosen as enrollment chooses it."""
    import numpy as np

    from service.errors import MarginFaceError
    from service.evaluation import folder_identification
    from service.recognition import build_pipeline
    from service.vision.image import decode_image

    settings = with_recognizer(settings_from(args), args.model)
    pipeline = build_pipeline(settings, batching=False)

    def embed(path: Path) -> np.ndarray | None:
        try:
            image = decode_image(path.read_bytes(), max_pixels=settings.limits.max_image_pixels)
            return pipeline.choose_face(image, aligned=args.aligned).face.embedding
        except (MarginFaceError, OSError):  # no face, not an image: counted, not searched
            return None

    report = folder_identification(
        embed,
        existing(args.photos),
        existing(args.probes) if args.probes else None,
        enrolled=args.enrolled_people,
        gallery_photos=args.gallery_photos,
        probes_per_person=args.probes_per_person,
    )
    report["model_id"] = pipeline.model_id
    emit(args, report, json.dumps(report, indent=2))
    return 0
