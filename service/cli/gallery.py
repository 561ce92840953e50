"""``marginface index | gallery ... | db upgrade``: bulk enrollment and the gallery's upkeep."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli.common import (
    Subcommands,
    add_common,
    add_worker_options,
    emit,
    existing,
    progress_bar,
    settings_from,
    table,
)
from service.cli.model_move import add_migrate_model
from service.cli.recognize import recognition
from service.settings import Settings


def register(sub: Subcommands) -> None:
    """Add the commands."""
    index = sub.add_parser("index", help="enroll ROOT/<subject_id>/*.jpg in bulk (resumable)")
    index.add_argument("root", help="a folder per subject; folder names are the subject ids")
    add_worker_options(index, threads_note="; 0: threads in this process (--workers of them)")
    index.add_argument("--workers", type=int, default=2, help="threads when --processes 0")
    index.add_argument("--batch-size", type=int, default=64, help="faces per write batch")
    index.add_argument(
        "--policy",
        choices=["largest", "reject"],
        help="several faces in one image (default: the enroll_policy setting)",
    )
    index.add_argument("--report", default="index-report.json", help="per-file report (JSON)")
    index.set_defaults(func=cmd_index)

    gal = sub.add_parser("gallery", help="back up, restore, reconcile and migrate the gallery")
    gsub = gal.add_subparsers(dest="gallery_command", required=True)
    gexport = gsub.add_parser("export", help="consistent backup, server running")
    gexport.add_argument("file", help="the export file to write (a single .tar)")
    gexport.set_defaults(func=cmd_gallery_export)
    gimport = gsub.add_parser("import", help="restore (server stopped)")
    gimport.add_argument("file", help="an export file written by gallery export")
    gimport.add_argument("--replace", action="store_true", help="overwrite a non-empty gallery")
    gimport.set_defaults(func=cmd_gallery_import)
    greconcile = gsub.add_parser(
        "reconcile", help="repair the index from the store (either backend)"
    )
    greconcile.set_defaults(func=cmd_gallery_reconcile)
    gverify = gsub.add_parser(
        "verify", help="check every stored embedding and the index; list quarantined faces (exit 1)"
    )
    gverify.set_defaults(func=cmd_gallery_verify)
    gmigrate = gsub.add_parser(
        "migrate", help="copy the gallery to the other backend (API stopped) and compare the two"
    )
    gmigrate.add_argument(
        "--to",
        required=True,
        choices=["distributed", "embedded"],
        help="the backend to copy the gallery into (its settings come from MARGINFACE_GALLERY__*)",
    )
    gmigrate.add_argument("--probes", type=int, default=100, help="sampled searches to compare")
    gmigrate.add_argument("--batch", type=int, default=2000, help="rows per transaction")
    gmigrate.set_defaults(func=cmd_gallery_migrate)
    for p in (index, gexport, gimport, greconcile, gverify, gmigrate, add_migrate_model(gsub)):
        p.add_argument("--gallery", help="gallery folder (default: var/gallery)")

    db = sub.add_parser("db", help="the distributed gallery's PostgreSQL schema")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    dbup = dbsub.add_parser("upgrade", help="apply pending schema migrations")
    dbup.add_argument("--dsn", help="connection string (default: gallery.postgres_dsn)")
    dbup.set_defaults(func=cmd_db_upgrade)
    add_common(index)
    for p in (gexport, gimport, greconcile, gverify, gmigrate):
        add_common(p, device=False)  # the model's id, never its weights
    add_common(dbup, models_dir=False, device=False)


def cmd_index(args: argparse.Namespace) -> int:
    """Enroll a folder per subject in bulk: resumable, idempotent, with a progress bar."""
    from service.indexer import BatchIndexer

    rec = recognition(args, with_gallery=True)
    if args.policy:
        rec.settings = rec.settings.model_copy(update={"enroll_policy": args.policy})
    indexer = BatchIndexer(
        rec.settings,
        rec.pipeline,
        rec.gallery,
        workers=args.workers,
        batch_size=args.batch_size,
        processes=args.processes,
    )
    if not args.no_progress and args.processes > 1:  # else the bar waits at 0, unexplained
        note = f"indexing: starting {args.processes} worker processes (each loads the models)"
        print(note, file=sys.stderr, flush=True)
    try:
        with progress_bar("indexing", disable=args.no_progress) as progress:
            summary = indexer.run(existing(args.root), progress=progress)
    finally:
        rec.gallery.close()
    report = Path(args.report)
    summary.write(report)
    payload = summary.to_dict(with_files=False) | {"report": str(report)}
    rows = [(k.replace("_", " "), payload[k]) for k in summary.counts]
    rows.append(("of which: the chosen face of several", payload["enrolled_largest_of_several"]))
    rows.append(("subjects created", payload["subjects_created"]))
    view = table(
        f"{summary.total} images in {summary.seconds:.1f} s ({payload['images_per_s']} img/s); "
        f"file lists in {report}",
        ("outcome", "images"),
        rows,
    )
    emit(args, payload, view)
    return 0


def cmd_gallery_export(args: argparse.Namespace) -> int:
    """Back up the gallery's store (consistent while the server runs)."""
    from service.gallery import export_store
    from service.gallery.backends import embedded_folder

    info = export_store(embedded_folder(settings_from(args).gallery), Path(args.file))
    emit(args, info, f"exported {info['subjects']} subjects, {info['faces']} faces to {args.file}")
    return 0


def cmd_gallery_import(args: argparse.Namespace) -> int:
    """Restore a backup into the gallery folder (stop the server first)."""
    from service.gallery import import_store
    from service.gallery.backends import embedded_folder

    info = import_store(
        existing(args.file), embedded_folder(settings_from(args).gallery), replace=args.replace
    )
    emit(
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

    settings = settings_from(args)
    model_id, dim = _recognizer_pin(settings)
    gallery = backends.open_gallery(
        settings.gallery, model_id=model_id, embedding_dim=dim, check_index=False
    )
    try:
        info = gallery.reconcile()
    finally:
        gallery.close()
    emit(
        args,
        info,
        f"{info['faces']} faces in the store: {info['replayed']} replayed into the index, "
        f"{info['removed']} removed from it",
    )
    return 0


def cmd_gallery_verify(args: argparse.Namespace) -> int:
    """Check every stored embedding (checksum, unit norm) and the index against the store."""
    from service.gallery import backends

    settings = settings_from(args)
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
    lines += [
        f"  {count} faces hold embeddings of {model} (kept, never compared)"
        for model, count in report["other_models"].items()
    ]
    emit(args, report, "\n".join(lines))
    return 0 if not report["quarantined"] and index["consistent"] else 1


def cmd_gallery_migrate(args: argparse.Namespace) -> int:
    """Copy the gallery of one backend into the (empty) other, then compare them."""
    from service.gallery import backends
    from service.gallery.transfer import compare_galleries, copy_gallery

    settings = settings_from(args)
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
    emit(
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

    settings = settings_from(args)
    dsn = args.dsn or postgres_dsn(settings.gallery)
    info = upgrade(dsn)
    applied = ", ".join(f"{v:04d}" for v in info["applied"]) or "none (already current)"
    emit(args, info, f"schema at version {info['to']}; applied: {applied}")
    return 0
