"""``python -m training.train [CONFIG.json] [--key=value ...]`` (torchrun-compatible).

Also: ``python -m training.train prepare SOURCE OUTPUT`` aligns raw photos with the service
pipeline, and ``python -m training.train export RUN_DIR --name NAME`` exports and registers a model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Dispatch: prepare, export, or train."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args and args[0] == "prepare":
        return _prepare(args[1:])
    if args and args[0] == "export":
        return _export(args[1:])
    from training.config import load_config
    from training.engine import train

    config_path = args[0] if args and not args[0].startswith("--") else None
    overrides = args[1:] if config_path else args
    try:
        config = load_config(config_path, overrides)
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    metrics = train(config)
    print(json.dumps(metrics))
    return 0


def _prepare(argv: list[str]) -> int:
    from service.recognition import build_pipeline
    from service.settings import Settings
    from training.data import prepare_dataset

    parser = argparse.ArgumentParser(prog="python -m training.train prepare")
    parser.add_argument("source", help="folder per identity, or a CSV of path,identity")
    parser.add_argument("output", help="aligned dataset folder (resumable)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    pipeline = build_pipeline(Settings(device="cpu"), batching=False)
    report = prepare_dataset(Path(args.source), Path(args.output), pipeline, workers=args.workers)
    summary = {k: (len(v) if isinstance(v, list) else v) for k, v in report.to_dict().items()}
    print(json.dumps(summary))
    return 0


def _export(argv: list[str]) -> int:
    from training.export import export_run

    parser = argparse.ArgumentParser(prog="python -m training.train export")
    parser.add_argument("run_dir")
    parser.add_argument("--name", required=True, help="registry name, e.g. my-arcface-r18")
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--parity-images", help="folder of aligned crops for the parity check")
    parser.add_argument("--licence", default="", help="licence of the training data (inherited)")
    args = parser.parse_args(argv)
    manifest = export_run(
        Path(args.run_dir),
        Path(args.models_dir),
        args.name,
        parity_images=Path(args.parity_images) if args.parity_images else None,
        data_licence=args.licence,
    )
    print(
        json.dumps(
            {"name": manifest.name, "sha256": manifest.sha256, "model_id": manifest.model_id}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
