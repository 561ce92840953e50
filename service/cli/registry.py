"""``marginface models``: fetch the pinned weights, list the registry."""

from __future__ import annotations

import argparse

from service.cli.common import Subcommands, add_common, emit, settings_from, table


def register(sub: Subcommands) -> None:
    """Add the command group."""
    models = sub.add_parser("models", help="the model registry")
    msub = models.add_subparsers(dest="models_command", required=True)
    fetch = msub.add_parser("fetch", help="fetch pinned weights")
    fetch.add_argument(
        "--derived",
        action="store_true",
        help="also build the derived models (int8: needs their calibration photos)",
    )
    fetch.set_defaults(func=cmd_models_fetch)
    listing = msub.add_parser("list", help="list models")
    listing.set_defaults(func=cmd_models_list)
    for p in (fetch, listing):
        add_common(p, device=False)


def cmd_models_fetch(args: argparse.Namespace) -> int:
    """Fetch every registry model's pinned weights (idempotent)."""
    from service.models import fetch_all

    settings = settings_from(args)
    results = fetch_all(settings.models_dir, derived=args.derived)
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
    emit(args, payload, "\n".join(lines))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    """List registered models with their licences and whether their weights are present."""
    from service.models import list_models, sha256_file

    settings = settings_from(args)
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
    view = table(
        f"models in {settings.models_dir}",
        ("name", "task", "weights", "licence"),
        [(r["name"], r["task"], "ok" if r["present"] else "MISSING", r["licence"]) for r in rows],
    )
    emit(args, {"models": rows}, view)
    return 0
