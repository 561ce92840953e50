"""The ``marginface`` command: serve, models, detect, verify, identify.

``--json`` prints exactly one JSON object on stdout; logs go to stderr. Errors exit with status 2
and print the same error body the API uses.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.errors import MarginFaceError
from service.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with command-line overrides."""
    overrides: dict[str, Any] = {}
    if getattr(args, "models_dir", None):
        overrides["models_dir"] = Path(args.models_dir)
    if getattr(args, "device", None):
        overrides["device"] = args.device
    settings = Settings()
    if getattr(args, "gallery", None):
        overrides["gallery"] = settings.gallery.model_copy(update={"path": Path(args.gallery)})
    return settings.model_copy(update=overrides) if overrides else settings


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload) if args.json else text)


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API with uvicorn."""
    import faulthandler
    import signal

    import uvicorn

    from service.app import create_app
    from service.metrics import configure_logging
    from service.resources import Resources

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    # `kill -USR1 <pid>` prints every thread's stack to stderr (what is a stuck server doing?)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Open (and self-check) everything before uvicorn starts, so that a device that cannot run
    # the models (device=cuda without a working CUDA provider) stops here with a clear message.
    resources = Resources.open(settings)
    app = create_app(settings, resources=resources)
    # uvicorn's own loggers propagate to the root handler (JSON lines); the access log is ours
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        workers=1,
    )
    resources.close()
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    """Fetch every registry model's pinned weights (idempotent)."""
    from service.models import fetch_all

    settings = _settings(args)
    results = fetch_all(settings.models_dir)
    payload = {
        "models": [
            {
                "name": m.name,
                "file": str(settings.models_dir / m.name / m.file),
                "sha256": m.sha256,
                "fetched": wrote,
            }
            for m, wrote in results
        ]
    }
    lines = [
        f"{m.name}: {'fetched' if wrote else 'already present'}, sha256 {m.sha256[:16]}..."
        for m, wrote in results
    ]
    _emit(args, payload, "\n".join(lines))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    """List registered models with their licences and whether their weights are present."""
    from service.models import list_models, sha256_file

    settings = _settings(args)
    rows = []
    for m in list_models(settings.models_dir):
        weights = settings.models_dir / m.name / m.file
        present = weights.is_file() and sha256_file(weights) == m.sha256
        rows.append(
            {
                "name": m.name,
                "task": m.task,
                "licence": m.licence,
                "model_id": m.model_id,
                "present": present,
            }
        )
    text = "\n".join(
        f"{r['name']:<24} {r['task']:<12} {'ok' if r['present'] else 'MISSING':<8} {r['licence']}"
        for r in rows
    )
    _emit(args, {"models": rows}, text)
    return 0


def _recognition(args: argparse.Namespace, *, with_gallery: bool) -> Any:
    from service.recognition import Recognition, build_pipeline, open_gallery

    settings = _settings(args)
    pipeline = build_pipeline(settings, batching=False)
    gallery = open_gallery(settings, pipeline.embedder.manifest) if with_gallery else None
    return Recognition(settings, pipeline, gallery)


def cmd_detect(args: argparse.Namespace) -> int:
    """Detect faces in one image."""
    from service.api import convert

    rec = _recognition(args, with_gallery=False)
    image, faces = rec.detect(_read(args.image))
    payload = {
        "image": args.image,
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "faces": [convert.box(f).model_dump() for f in faces],
    }
    text = f"{len(faces)} face(s) in {args.image}\n" + "\n".join(
        f"  box={[round(v) for v in f.box]} score={f.score:.3f}" for f in faces
    )
    _emit(args, payload, text)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Compare the main faces of two images."""
    rec = _recognition(args, with_gallery=False)
    score, threshold, _, _ = rec.verify_images(
        _read(args.image_a),
        _read(args.image_b),
        threshold=args.threshold,
        far=args.far,
        aligned=args.aligned,
    )
    match = score >= threshold.value
    payload = {
        "image_a": args.image_a,
        "image_b": args.image_b,
        "score": round(score, 6),
        "threshold": {"value": threshold.value, "source": threshold.source},
        "match": match,
        "model_id": rec.pipeline.model_id,
    }
    text = f"{'SAME' if match else 'DIFFERENT'} score={score:.4f} threshold={threshold.value:.4f}"
    _emit(args, payload, text)
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    """Identify every face of one image against the local gallery."""
    from service.api import convert

    rec = _recognition(args, with_gallery=True)
    try:
        faces, threshold = rec.identify(
            _read(args.image),
            top_k=args.top_k,
            threshold=args.threshold,
            far=args.far,
            aligned=args.aligned,
        )
    finally:
        rec.gallery.close()
    payload = {
        "image": args.image,
        "model_id": rec.pipeline.model_id,
        "threshold": {"value": threshold.value, "source": threshold.source},
        "faces": [convert.identified(f).model_dump() for f in faces],
    }
    text = (
        "\n".join(
            f"face {i}: {f.match.subject_id if f.match else 'unknown'}"
            + (f" ({f.match.score:.3f})" if f.match else "")
            for i, f in enumerate(faces)
        )
        or "no faces"
    )
    _emit(args, payload, text)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Enroll a folder per subject in bulk: resumable, idempotent, with a progress bar."""
    from tqdm import tqdm

    from service.indexer import BatchIndexer

    rec = _recognition(args, with_gallery=True)
    if args.policy:
        rec.settings = rec.settings.model_copy(update={"enroll_policy": args.policy})
    indexer = BatchIndexer(
        rec.settings, rec.pipeline, rec.gallery, workers=args.workers, batch_size=args.batch_size
    )
    bar = tqdm(total=0, unit="img", desc="indexing", disable=args.no_progress, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)  # tqdm throttles the redraws

    try:
        summary = indexer.run(Path(args.root), progress=progress)
    finally:
        bar.close()
        rec.gallery.close()
    report = Path(args.report)
    summary.write(report)
    payload = summary.to_dict(with_files=False) | {"report": str(report)}
    counts = ", ".join(f"{k.replace('_', ' ')} {payload[k]}" for k in summary.counts)
    text = (
        f"{summary.total} images in {summary.seconds:.1f} s ({payload['images_per_s']} img/s): "
        f"{counts}; file lists in {report}"
    )
    _emit(args, payload, text)
    return 0


def _keys_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    configured = Settings().auth.keys_file
    if configured is None:
        raise SystemExit("error: MARGINFACE_AUTH__KEYS_FILE is null: no keys file to manage")
    return configured


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Add a scoped key to the keys file; the key is printed once and stored only as sha256."""
    from service.keys import create_key

    path = _keys_file(args)
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    try:
        key = create_key(path, args.id, scopes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = path.resolve()
    readers = (
        f"a server started in {Path.cwd()} reads it within a second (the default "
        "MARGINFACE_AUTH__KEYS_FILE=var/keys.json, as scripts/serve.sh runs it)"
        if not args.file and not os.environ.get("MARGINFACE_AUTH__KEYS_FILE")
        else f"a server reads it when its MARGINFACE_AUTH__KEYS_FILE is {where}"
    )
    payload = {
        "id": args.id,
        "scopes": sorted(scopes),
        "key": key,
        "file": str(where),
        "read_by": readers,
    }
    _emit(
        args,
        payload,
        f"{key}\n(id {args.id}, scopes {','.join(sorted(scopes))}, in {where}; shown once, "
        f"only its sha256 is stored)\n{readers}",
    )
    return 0


def cmd_keys_images_key(args: argparse.Namespace) -> int:
    """Print a new key for privacy.images_key (encrypts kept photos at rest)."""
    from service.images import new_key

    key = new_key()
    _emit(args, {"images_key": key}, key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """Key ids and scopes (never the keys)."""
    from service.keys import read_keys_file

    path = _keys_file(args)
    entries = read_keys_file(path) if path.exists() else []
    rows = [
        {"id": e["id"], "scopes": e["scopes"], "created_at": e.get("created_at")} for e in entries
    ]
    _emit(
        args,
        {"file": str(path), "keys": rows},
        "\n".join(f"{r['id']}: {','.join(r['scopes'])}" for r in rows) or "no keys",
    )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Remove a key; a running service stops accepting it within a second."""
    from service.keys import revoke_key

    removed = revoke_key(_keys_file(args), args.id)
    _emit(
        args,
        {"id": args.id, "revoked": removed},
        f"revoked {args.id}" if removed else f"no key with id {args.id}",
    )
    return 0 if removed else 2


def cmd_gallery_export(args: argparse.Namespace) -> int:
    """Back up the gallery's store (consistent while the server runs)."""
    from service.gallery import export_store
    from service.gallery.backends import embedded_folder

    info = export_store(embedded_folder(_settings(args).gallery), Path(args.file))
    _emit(args, info, f"exported {info['subjects']} subjects, {info['faces']} faces to {args.file}")
    return 0


def cmd_gallery_import(args: argparse.Namespace) -> int:
    """Restore a backup into the gallery folder (stop the server first)."""
    from service.gallery import import_store
    from service.gallery.backends import embedded_folder

    info = import_store(
        Path(args.file), embedded_folder(_settings(args).gallery), replace=args.replace
    )
    _emit(
        args,
        info,
        f"imported {info['subjects']} subjects, {info['faces']} faces into "
        f"{info['gallery']}; the index is rebuilt at the next start",
    )
    return 0


def _recognizer_pin(settings: Settings) -> tuple[str, int]:
    """(model id, embedding size) of the configured recognizer, from its manifest alone."""
    from service.models import resolve_model

    manifest, _ = resolve_model(settings.models_dir, settings.embedder.model)
    assert manifest.embedding_dim is not None
    return manifest.model_id, manifest.embedding_dim


def cmd_gallery_reconcile(args: argparse.Namespace) -> int:
    """Replay faces the index lacks from the store, and drop ids the store no longer has."""
    from service.gallery import backends

    settings = _settings(args)
    model_id, dim = _recognizer_pin(settings)
    gallery = backends.open_gallery(
        settings.gallery, model_id=model_id, embedding_dim=dim, check_index=False
    )
    try:
        info = gallery.reconcile()
    finally:
        gallery.close()
    _emit(
        args,
        info,
        f"{info['faces']} faces in the store: {info['replayed']} replayed into the index, "
        f"{info['removed']} removed from it",
    )
    return 0


def cmd_gallery_verify(args: argparse.Namespace) -> int:
    """Check every stored embedding (checksum, unit norm) and the index against the store."""
    from service.gallery import backends

    settings = _settings(args)
    model_id, dim = _recognizer_pin(settings)
    gallery = backends.open_gallery(settings.gallery, model_id=model_id, embedding_dim=dim)
    try:
        report = gallery.verify()
    finally:
        gallery.close()
    index = report["index"]
    lines = [
        f"{index['faces']} usable faces, {index['indexed']} indexed "
        f"({'consistent' if index['consistent'] else 'INCONSISTENT'}); "
        f"{len(report['quarantined'])} quarantined"
    ] + [f"  face {q['face_id']} of {q['subject_id']}: {q['reason']}" for q in report["quarantine"]]
    _emit(args, report, "\n".join(lines))
    return 0 if not report["quarantined"] and index["consistent"] else 1


def cmd_gallery_migrate(args: argparse.Namespace) -> int:
    """Copy the gallery of one backend into the (empty) other, then compare them."""
    from service.gallery import backends
    from service.gallery.transfer import compare_galleries, copy_gallery

    settings = _settings(args)
    source_backend = "embedded" if args.to == "distributed" else "distributed"
    model_id, dim = _recognizer_pin(settings)
    source = backends.open_gallery(
        settings.gallery, model_id=model_id, embedding_dim=dim, backend=source_backend
    )
    try:
        target = backends.open_gallery(
            settings.gallery,
            model_id=source.model_id,
            embedding_dim=source.embedding_dim,
            backend=args.to,
        )
        try:
            copied = copy_gallery(source, target, batch=args.batch)
            check = compare_galleries(source, target, probes=args.probes)
        finally:
            target.close()
    finally:
        source.close()
    info = {"from": source_backend, "to": args.to, "copied": copied, "check": check}
    _emit(
        args,
        info,
        f"copied {copied['subjects']} subjects and {copied['faces']} faces from {source_backend} "
        f"to {args.to} in {copied['seconds']} s; {check['identical_searches']}/{check['probes']} "
        f"sampled searches identical; {'OK' if check['ok'] else 'MISMATCH'}",
    )
    return 0 if check["ok"] else 1


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Bring the distributed gallery's PostgreSQL schema to this release's version."""
    from service.gallery.backends import postgres_dsn
    from service.gallery.postgres import upgrade

    settings = _settings(args)
    dsn = args.dsn or postgres_dsn(settings.gallery)
    info = upgrade(dsn)
    applied = ", ".join(f"{v:04d}" for v in info["applied"]) or "none (already current)"
    _emit(args, info, f"schema at version {info['to']}; applied: {applied}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure thresholds by FAR on labelled pairs and write them into the model's manifest."""
    from service.calibration import calibrate, score_pairs
    from service.evaluation import read_lfw_pairs
    from service.models import Thresholds, load_manifest, save_manifest
    from service.recognition import build_pipeline

    settings = _settings(args)
    if args.model:
        settings = settings.model_copy(
            update={"embedder": settings.embedder.model_copy(update={"model": args.model})}
        )
    pipeline = build_pipeline(settings, batching=False)
    pairs = read_lfw_pairs(Path(args.pairs), Path(args.images))
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
    _emit(args, payload, text)
    return 0


def _pair_report(args: argparse.Namespace, pairs: list[Any], name: str) -> dict[str, Any]:
    """Score pairs through the full pipeline, report, and draw the ROC."""
    from service.calibration import score_pairs
    from service.evaluation import accuracy_at, verification_report
    from service.plots import draw_roc
    from service.recognition import build_pipeline

    settings = _settings(args)
    if args.model:
        settings = settings.model_copy(
            update={"embedder": settings.embedder.model_copy(update={"model": args.model})}
        )
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

    pairs = read_lfw_pairs(Path(args.pairs), Path(args.images))
    report = _pair_report(args, pairs, f"LFW {Path(args.pairs).name}")
    mean, std = report["kfold_accuracy_mean"], report["kfold_accuracy_std"]
    text = (
        f"LFW 10-fold accuracy {mean:.4f} ± {std:.4f}, EER {report['eer']:.4f}, "
        f"AUC {report['roc_auc']:.5f}; report in {args.out}"
    )
    _emit(args, report, text)
    return 0


def cmd_eval_pairs(args: argparse.Namespace) -> int:
    """Any CSV of image_a,image_b,same."""
    from service.calibration import read_pairs_csv

    report = _pair_report(args, read_pairs_csv(Path(args.csv)), Path(args.csv).name)
    best, at = report["best_threshold_accuracy"], report["best_threshold"]
    text = f"best-threshold accuracy {best:.4f} at {at:.4f}"
    _emit(args, report, text)
    return 0


def cmd_eval_identify(args: argparse.Namespace) -> int:
    """Open-set identification on folder-per-person data, in a throwaway gallery."""
    import tempfile

    import numpy as np

    from service.errors import NoFace
    from service.evaluation import identification_report
    from service.gallery import NewFace
    from service.gallery.embedded import embedded_gallery
    from service.recognition import build_pipeline
    from service.vision.image import decode_image

    settings = _settings(args)
    pipeline = build_pipeline(settings, batching=False)
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

    def photos(folder: Path) -> list[Path]:
        files = [p for p in folder.iterdir() if p.suffix.lower() in suffixes]
        return sorted(files, key=lambda p: (len(p.stem), p.stem))

    def embed(path: Path) -> np.ndarray | None:
        image = decode_image(path.read_bytes())
        try:  # the pipeline owns which face counts: the largest, as enrollment does
            return pipeline.choose_face(image, aligned=args.aligned).face.embedding
        except NoFace:
            return None

    root = Path(args.gallery)
    people = sorted(p.name for p in root.iterdir() if p.is_dir())
    if args.probes:
        enrolled = people
        gallery_photos = {n: photos(root / n) for n in enrolled}
        probe_root = Path(args.probes)
        probe_people = sorted(p.name for p in probe_root.iterdir() if p.is_dir())
        probes = {n: photos(probe_root / n) for n in probe_people}
    else:  # one folder: the first N people enrolled with K photos each; the rest are probes
        enrolled = people[: args.enrolled_people]
        gallery_photos = {n: photos(root / n)[: args.gallery_photos] for n in enrolled}
        probes = {
            n: photos(root / n)[args.gallery_photos if n in enrolled else 0 :][
                : args.probes_per_person
            ]
            for n in people
        }
    with tempfile.TemporaryDirectory() as tmp:
        manifest = pipeline.embedder.manifest
        gallery = embedded_gallery(
            Path(tmp), model_id=manifest.model_id, embedding_dim=pipeline.embedder.embedding_dim
        )
        for name in enrolled:
            gallery.create_subject(name, name, {})
            faces = [
                NewFace(v, (0, 0, 0, 0), 1.0, str(p))
                for p in gallery_photos[name]
                if (v := embed(p)) is not None
            ]
            gallery.add_faces(name, faces, model_id=manifest.model_id)
        mated, rank5, non_mated = [], [], []
        for name, paths in probes.items():
            for p in paths:
                v = embed(p)
                if v is None:
                    continue
                (candidates,) = gallery.search(v[None], top_k=5, model_id=manifest.model_id)
                top = candidates[0]
                if name in enrolled:
                    mated.append((top.score, top.subject_id == name))
                    rank5.append(any(c.subject_id == name for c in candidates))
                else:
                    non_mated.append(top.score)
        gallery.close()
    report = identification_report(mated, rank5, non_mated)
    report.update(
        {"enrolled_people": len(enrolled), "people": len(probes), "model_id": manifest.model_id}
    )
    text = json.dumps(report, indent=2)
    _emit(args, report, text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    common.add_argument("--models-dir", help="model registry folder (default: models)")
    common.add_argument("--device", choices=["auto", "cpu", "cuda"])

    parser = argparse.ArgumentParser(
        prog="marginface",
        description=__doc__,
        epilog="marginface train ... runs python -m training.train ... (needs the train extra)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the REST API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--gallery", help="gallery folder (default: var/gallery)")
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="the model registry")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("fetch", parents=[common], help="fetch pinned weights").set_defaults(
        func=cmd_models_fetch
    )
    msub.add_parser("list", parents=[common], help="list models").set_defaults(func=cmd_models_list)

    detect = sub.add_parser("detect", parents=[common], help="detect faces in an image")
    detect.add_argument("image")
    detect.set_defaults(func=cmd_detect)

    def add_match_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threshold", type=float, help="cosine threshold (default: the model's)")
        p.add_argument("--far", type=float, help="false-accept rate, from the model's calibration")
        p.add_argument("--aligned", action="store_true", help="inputs are aligned 112x112 crops")

    verify = sub.add_parser("verify", parents=[common], help="same person in two images?")
    verify.add_argument("image_a")
    verify.add_argument("image_b")
    add_match_options(verify)
    verify.set_defaults(func=cmd_verify)

    identify = sub.add_parser(
        "identify", parents=[common], help="identify faces against the gallery"
    )
    identify.add_argument("image")
    identify.add_argument("--top-k", type=int, default=None)
    identify.add_argument("--gallery", help="gallery folder (default: var/gallery)")
    add_match_options(identify)
    identify.set_defaults(func=cmd_identify)
    index = sub.add_parser(
        "index", parents=[common], help="enroll ROOT/<subject_id>/*.jpg in bulk (resumable)"
    )
    index.add_argument("root", help="a folder per subject; folder names are the subject ids")
    index.add_argument("--gallery", help="gallery folder (default: var/gallery)")
    index.add_argument("--workers", type=int, default=2, help="decode/detect threads")
    index.add_argument("--batch-size", type=int, default=64, help="faces per embedding batch")
    index.add_argument(
        "--policy",
        choices=["largest", "reject"],
        help="several faces in one image (default: the enroll_policy setting)",
    )
    index.add_argument("--report", default="index-report.json", help="per-file report (JSON)")
    index.add_argument("--no-progress", action="store_true", help="no progress bar")
    index.set_defaults(func=cmd_index)
    gal = sub.add_parser("gallery", help="back up, restore, reconcile and migrate the gallery")
    gsub = gal.add_subparsers(dest="gallery_command", required=True)
    gexport = gsub.add_parser("export", parents=[common], help="consistent backup, server running")
    gexport.add_argument("file")
    gexport.set_defaults(func=cmd_gallery_export)
    gimport = gsub.add_parser("import", parents=[common], help="restore (server stopped)")
    gimport.add_argument("file")
    gimport.add_argument("--replace", action="store_true", help="overwrite a non-empty gallery")
    gimport.set_defaults(func=cmd_gallery_import)
    greconcile = gsub.add_parser(
        "reconcile", parents=[common], help="repair the index from the store (either backend)"
    )
    greconcile.set_defaults(func=cmd_gallery_reconcile)
    gverify = gsub.add_parser(
        "verify",
        parents=[common],
        help="check every stored embedding and the index; list quarantined faces (exit 1)",
    )
    gverify.set_defaults(func=cmd_gallery_verify)
    gmigrate = gsub.add_parser(
        "migrate",
        parents=[common],
        help="copy the gallery to the other backend (API stopped) and compare the two",
    )
    gmigrate.add_argument("--to", required=True, choices=["distributed", "embedded"])
    gmigrate.add_argument("--probes", type=int, default=100, help="sampled searches to compare")
    gmigrate.add_argument("--batch", type=int, default=2000, help="rows per transaction")
    gmigrate.set_defaults(func=cmd_gallery_migrate)
    for p in (gexport, gimport, greconcile, gverify, gmigrate):
        p.add_argument("--gallery", help="gallery folder (default: var/gallery)")

    db = sub.add_parser("db", help="the distributed gallery's PostgreSQL schema")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    dbup = dbsub.add_parser("upgrade", parents=[common], help="apply pending schema migrations")
    dbup.add_argument("--dsn", help="connection string (default: gallery.postgres_dsn)")
    dbup.set_defaults(func=cmd_db_upgrade)

    keys = sub.add_parser("keys", help="scoped API keys (hashed keys file)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kcreate = ksub.add_parser("create", parents=[common], help="add a key; prints it once")
    kcreate.add_argument("--id", required=True, help="a name for the key (who uses it)")
    kcreate.add_argument("--scopes", default="read", help="comma list of read,write,admin")
    kcreate.set_defaults(func=cmd_keys_create)
    klist = ksub.add_parser("list", parents=[common], help="key ids and scopes")
    klist.set_defaults(func=cmd_keys_list)
    krevoke = ksub.add_parser("revoke", parents=[common], help="remove a key")
    krevoke.add_argument("id")
    krevoke.set_defaults(func=cmd_keys_revoke)
    kimages = ksub.add_parser(
        "images-key", parents=[common], help="print a new key for privacy.images_key"
    )
    kimages.set_defaults(func=cmd_keys_images_key)
    for p in (kcreate, klist, krevoke):
        p.add_argument(
            "--file", help="keys file (default: MARGINFACE_AUTH__KEYS_FILE or var/keys.json)"
        )

    calibrate = sub.add_parser(
        "calibrate", parents=[common], help="write thresholds by FAR into a model's manifest"
    )
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

    evaluate = sub.add_parser("eval", help="evaluation protocols through the full pipeline")
    esub = evaluate.add_subparsers(dest="eval_command", required=True)

    def add_pair_options(p: argparse.ArgumentParser) -> None:
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

    lfw = esub.add_parser("lfw", parents=[common], help="LFW View-2 10-fold protocol")
    lfw.add_argument("--images", required=True)
    lfw.add_argument("--pairs", required=True)
    add_pair_options(lfw)
    lfw.set_defaults(func=cmd_eval_lfw)
    pairs = esub.add_parser("pairs", parents=[common], help="a CSV of image_a,image_b,same")
    pairs.add_argument("--csv", required=True)
    add_pair_options(pairs)
    pairs.set_defaults(func=cmd_eval_pairs)
    ident = esub.add_parser("identify", parents=[common], help="open-set identification")
    ident.add_argument("--gallery", required=True, help="folder per person to enroll")
    ident.add_argument("--probes", help="folder per person to search (else split --gallery)")
    ident.add_argument("--enrolled-people", type=int, default=12)
    ident.add_argument("--gallery-photos", type=int, default=5)
    ident.add_argument("--probes-per-person", type=int, default=20)
    ident.add_argument("--aligned", action="store_true", help="photos are aligned 112x112 crops")
    ident.set_defaults(func=cmd_eval_identify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marginface`` command."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["train"]:
        # The service never imports training (or torch): hand over to its own entry point.
        import subprocess

        return subprocess.call([sys.executable, "-m", "training.train", *args_list[1:]])
    parser = build_parser()
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s"
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MarginFaceError as exc:
        print(
            json.dumps(exc.to_dict()) if getattr(args, "json", False) else f"error: {exc.message}",
            file=sys.stdout if getattr(args, "json", False) else sys.stderr,
        )
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
