"""``marginface gallery migrate-model``: the command's steps (service.model_migration does the
work): re-embed and stage beside a running service, then switch with the gallery to itself."""

from __future__ import annotations

import argparse
from typing import Any

from service.cli.common import add_common, emit, progress_bar, settings_from
from service.errors import GalleryBusy, MigrationIncomplete
from service.settings import Settings

#: a switch refused because faces were enrolled meanwhile embeds those and tries again
SWITCH_ATTEMPTS = 3


def add_migrate_model(gsub: Any) -> argparse.ArgumentParser:
    """``marginface gallery migrate-model`` (its --gallery option is added with its siblings')."""
    gmodel = gsub.add_parser(
        "migrate-model",
        help="move the gallery to another recognizer: re-embed every face from its kept chip "
        "or photo (beside a running service), then switch (service stopped); resumable",
    )
    which = gmodel.add_mutually_exclusive_group(required=True)
    which.add_argument("--to", help="the registered model to move to (marginface models list)")
    which.add_argument(
        "--rollback", action="store_true", help="move back to the model before the last switch"
    )
    which.add_argument(
        "--purge",
        action="store_true",
        help="erase the staged embeddings of other models (no rollback afterwards)",
    )
    gmodel.add_argument(
        "--dry-run", action="store_true", help="count what can be re-embedded, change nothing"
    )
    gmodel.add_argument(
        "--no-switch", action="store_true", help="re-embed and stage only (the service may run)"
    )
    gmodel.add_argument(
        "--allow-uncalibrated",
        action="store_true",
        help="accept a model without calibrated thresholds",
    )
    gmodel.add_argument("--batch", type=int, default=32, help="faces per transaction")
    gmodel.add_argument("--no-progress", action="store_true", help="no progress bar")
    gmodel.set_defaults(func=cmd_gallery_migrate_model)
    add_common(gmodel)
    return gmodel


def cmd_gallery_migrate_model(args: argparse.Namespace) -> int:
    """Re-embed the gallery with another model and switch to it (or roll back, or purge)."""
    info, text, code = migrate_model(settings_from(args), args)
    emit(args, info, text)
    return code


def _current_pin(settings: Settings) -> tuple[str, int, str]:
    from service.models import resolve_model

    manifest, _ = resolve_model(settings.models_dir, settings.embedder.model)
    assert manifest.embedding_dim is not None
    return manifest.model_id, manifest.embedding_dim, manifest.sha256


def migrate_model(settings: Settings, args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    """(report, text, exit code) of one run of the command."""
    from service.gallery import backends
    from service.model_migration import model_named, target_model

    model_id, dim, sha = _current_pin(settings)
    staging = backends.open_staging(
        settings.gallery, model_id=model_id, embedding_dim=dim, model_sha256=sha
    )
    try:
        current = staging.pin
        if args.purge:
            staging.close()
            return _purge(settings, current.model_id, current.embedding_dim)
        if args.rollback:
            previous = staging.previous_model()
            if previous is None:
                return {"error": "no_previous_model"}, "the gallery was never switched", 1
            name = model_named(settings, previous.model_id)
        else:
            name = args.to
        # a rollback returns to the model the gallery was served with, calibrated or not
        allowed = args.allow_uncalibrated or args.rollback
        target = target_model(settings, name, allow_uncalibrated=allowed)
        if target.pin.model_id == current.model_id:
            info = {"to": current.model_id, "switched": 0, "already": True}
            return info, f"the gallery is on {current.model_id} already", 0
        reembedder = _reembedder(settings, name)
        from service.model_migration import dry_run, stage_all

        if args.dry_run:
            info = dry_run(staging, reembedder, target)
            return info, _dry_text(info), 0
        staged = _stage(staging, reembedder, target, args)
    finally:
        staging.close()
    if args.no_switch:
        return staged, _staged_text(staged, target.pin.model_id) + "; not switched (--no-switch)", 0
    try:
        backends.refuse_if_held(settings.gallery)
    except GalleryBusy:
        text = _staged_text(staged, target.pin.model_id) + (
            "; the service is running on this gallery: switch through it (POST "
            f'/v1/admin/model-migration {{"to": "{name}"}}, or the console), or stop it and run '
            "this command again (either re-embeds only what was enrolled meanwhile)"
        )
        return {**staged, "switched": 0, "switch_pending": True}, text, 0
    gallery = backends.open_gallery(
        settings.gallery, model_id=current.model_id, embedding_dim=current.embedding_dim
    )
    try:
        for attempt in range(SWITCH_ATTEMPTS):
            try:
                result = gallery.models.switch(target.pin)
                break
            except MigrationIncomplete:
                if attempt == SWITCH_ATTEMPTS - 1:
                    raise
                again = backends.open_staging(
                    settings.gallery, model_id=model_id, embedding_dim=dim, model_sha256=sha
                )
                try:
                    staged = stage_all(again, reembedder, target, batch=args.batch)
                finally:
                    again.close()
    finally:
        gallery.close()
    info = {**staged, **result, "from": current.model_id, "model": name}
    text = (
        f"switched {result['switched']} faces from {current.model_id} to {target.pin.model_id} "
        f"({result['failed']} could not be re-embedded: kept, not compared; `marginface gallery "
        f"verify` lists them). Start the service with MARGINFACE_EMBEDDER__MODEL={name} (it "
        "follows the gallery's model anyway); `migrate-model --rollback` goes back"
    )
    return info, text, 0


def _reembedder(settings: Settings, name: str) -> Any:
    """The target model's pipeline, and what the gallery kept of each face."""
    from service.images import ImageVault
    from service.model_migration import Reembedder
    from service.recognition import build_pipeline

    pipeline = build_pipeline(settings.with_recognizer(name), batching=False)
    privacy = settings.privacy
    keeps = privacy.keep_images or privacy.keep_face_chips
    vault = ImageVault(privacy) if keeps and privacy.images_dir.is_dir() else None
    return Reembedder(pipeline, vault, photos=privacy.keep_images)


def _stage(staging: Any, reembedder: Any, target: Any, args: argparse.Namespace) -> dict[str, Any]:
    from service.model_migration import stage_all

    with progress_bar("re-embedding", disable=args.no_progress or args.json) as progress:
        return stage_all(staging, reembedder, target, batch=args.batch, progress=progress)


def _purge(settings: Settings, model_id: str, dim: int) -> tuple[dict[str, Any], str, int]:
    from service.gallery import backends

    backends.refuse_if_held(settings.gallery)
    gallery = backends.open_gallery(settings.gallery, model_id=model_id, embedding_dim=dim)
    try:
        erased = gallery.models.purge()
    finally:
        gallery.close()
    return {"purged": erased}, f"erased {erased} staged embeddings; no rollback from here", 0


def _staged_text(info: dict[str, Any], model_id: str) -> str:
    return (
        f"{info['staged'] + info['on_target']}/{info['faces']} faces have an embedding of "
        f"{model_id} ({info['embedded']} new in {info['seconds']} s, {info['failed']} could not "
        "be re-embedded)"
    )


def _dry_text(info: dict[str, Any]) -> str:
    return (
        f"{info['faces']} faces; to move to {info['to']}: {info['to_embed']} to re-embed "
        f"({info['from_chip']} from face chips, {info['from_photo']} from kept photos), "
        f"{info['cannot_migrate']} cannot be (nothing kept), {info['staged']} staged already"
    )
