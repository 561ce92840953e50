"""``marginface detect | verify | identify``: one image at a time, as the API answers it."""

from __future__ import annotations

import argparse

from service.cli.common import (
    Subcommands,
    add_common,
    emit,
    read,
    settings_from,
    table,
    with_recognizer,
)
from service.recognition import Recognition


def register(sub: Subcommands) -> None:
    """Add the commands."""
    detect = sub.add_parser("detect", help="detect faces in an image")
    detect.add_argument("image", help="a photo (JPEG, PNG, WebP, TIFF, ...)")
    detect.set_defaults(func=cmd_detect)

    verify = sub.add_parser("verify", help="same person in two images?")
    verify.add_argument("image_a", help="a photo of one person")
    verify.add_argument("image_b", help="a photo of the same person, or not")
    verify.set_defaults(func=cmd_verify)

    identify = sub.add_parser("identify", help="identify faces against the gallery")
    identify.add_argument("image", help="a photo; every face in it is searched for")
    identify.add_argument("--top-k", type=int, default=None, help="candidates per face")
    identify.add_argument("--gallery", help="gallery folder (default: var/gallery)")
    identify.set_defaults(func=cmd_identify)

    for p in (verify, identify):
        p.add_argument("--threshold", type=float, help="cosine threshold (default: the model's)")
        p.add_argument("--far", type=float, help="false-accept rate, from the model's calibration")
        p.add_argument("--aligned", action="store_true", help="inputs are aligned 112x112 crops")
        p.add_argument("--model", help="recognizer (default: the configured one)")
    for p in (detect, verify, identify):
        add_common(p)


def recognition(args: argparse.Namespace, *, with_gallery: bool) -> Recognition:
    """The service's operations, built from the command line's settings."""
    from service.recognition import build_pipeline, open_gallery

    settings = with_recognizer(settings_from(args), getattr(args, "model", None))
    pipeline = build_pipeline(settings, batching=False)
    gallery = open_gallery(settings, pipeline.embedder.manifest) if with_gallery else None
    return Recognition(settings, pipeline, gallery)


def _quality(face: dict[str, object]) -> str:
    q = face.get("quality")
    return f"{q['score']:.2f} ({q['weakest']})" if isinstance(q, dict) else "-"


def cmd_detect(args: argparse.Namespace) -> int:
    """Detect faces in one image."""
    data = read(args.image)
    (height, width), faces = recognition(args, with_gallery=False).detect(data)
    found = [f.to_dict() for f in faces]
    payload = {
        "image": args.image,
        "width": width,
        "height": height,
        "faces": found,
    }
    view = table(
        f"{len(faces)} face(s) in {args.image}",
        ("face", "box", "score", "quality (weakest factor)"),
        [
            (i, [round(float(v)) for v in f.box], f"{f.score:.3f}", _quality(d))
            for i, (f, d) in enumerate(zip(faces, found, strict=True))
        ],
    )
    emit(args, payload, view)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Compare the main faces of two images."""
    a, b = read(args.image_a), read(args.image_b)
    rec = recognition(args, with_gallery=False)
    score, threshold, face_a, face_b = rec.verify_images(
        a, b, threshold=args.threshold, far=args.far, aligned=args.aligned
    )
    match = score >= threshold.value
    used = {
        side: c.face.to_dict() | {"faces_found": c.faces_found, "not_faces": c.not_faces}
        for side, c in (("face_a", face_a), ("face_b", face_b))
    }
    payload = {
        "image_a": args.image_a,
        "image_b": args.image_b,
        "score": round(score, 6),
        "threshold": {"value": threshold.value, "source": threshold.source},
        "match": match,
        "model_id": rec.pipeline.model_id,
        **used,
    }
    text = (
        f"{'SAME' if match else 'DIFFERENT'} score={score:.4f} threshold={threshold.value:.4f} "
        f"({threshold.source})\n"
        + "\n".join(
            f"  {side}: face at {[round(v) for v in d['box']]} of {d['faces_found']} found, "  # type: ignore[attr-defined]
            f"quality {_quality(d)}"
            for side, d in used.items()
        )
    )
    emit(args, payload, text)
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    """Identify every face of one image against the local gallery: every candidate, top-k."""
    data = read(args.image)
    rec = recognition(args, with_gallery=True)
    try:
        faces, threshold = rec.identify(
            data, top_k=args.top_k, threshold=args.threshold, far=args.far, aligned=args.aligned
        )
    finally:
        rec.gallery.close()
    found = [f.to_dict() for f in faces]
    payload = {
        "image": args.image,
        "model_id": rec.pipeline.model_id,
        "threshold": {"value": threshold.value, "source": threshold.source},
        "faces": found,
    }
    rows: list[tuple[object, ...]] = []
    for i, f in enumerate(faces):
        box = [round(float(v)) for v in f.face.box]
        decision = f"match: {f.match.subject_id}" if f.match else f.answer.decision
        if not f.candidates:
            rows.append((i, box, decision, "-", "-", "-"))
        for rank, c in enumerate(f.candidates, start=1):
            first = rank == 1
            rows.append(
                (
                    i if first else "",
                    box if first else "",
                    decision if first else "",
                    rank,
                    f"{c.subject_id} ({c.name})",
                    f"{c.score:.4f}",
                )
            )
        for v in f.vetoed:  # "not this person": at least as close to one of its negatives
            rows.append(("", "", "", "vetoed", f"{v.subject_id} ({v.name})",
                         f"{v.score:.4f} <= negative {v.negative:.4f}"))  # fmt: skip
    view = table(
        f"{len(faces)} face(s) in {args.image}; threshold {threshold.value:.4f} "
        f"({threshold.source})",
        ("face", "box", "decision", "rank", "candidate", "score"),
        rows,
    )
    emit(args, payload, view)
    return 0
