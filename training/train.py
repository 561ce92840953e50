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

TRAIN_EXTRA = ("torch", "matplotlib", "onnxscript")
INSTALL_HINT = "install it with: pip install -e '.[train]' (README.md: Training your own model)"

USAGE = """usage: marginface train [CONFIG.json] [--key=value ...]
       marginface train prepare SOURCE OUTPUT [--workers N]
       marginface train export RUN_DIR --name NAME --parity-images DIR [--licence TEXT]

  (same as python -m training.train ...; torchrun -m training.train ... for several processes)

Train or fine-tune a recognizer. Every config key below can be set as --key=value (or in
CONFIG.json, nested by the dots); the run's config is saved beside its checkpoints, and running
the same command again resumes exactly. A quick run, to check a set-up before a long one:
  --data.max_identities=50 --max_steps=200 --data.val_pair_limit=600
(50 identities, 200 steps, LFW validation on 600 of its 6,000 pairs: half same, half
different, an equal share of each fold). README.md: "Training your own model".

config keys (default):"""


def _missing(modules: tuple[str, ...]) -> list[str]:
    """The train extra's modules that cannot be imported."""
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


class _Format(logging.Formatter):
    """Progress is information and is printed bare; a warning or an error keeps its word."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname} {text}"


def _configure_logging() -> None:
    """Our information and everyone's warnings on stderr: the training loop's progress lines
    are INFO, not WARNING; other libraries' INFO chatter stays out."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Format("%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("training").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Dispatch: prepare, export, or train (or the help)."""
    args = list(sys.argv[1:] if argv is None else argv)
    _configure_logging()
    missing = _missing(TRAIN_EXTRA[:1] if args[:1] == ["prepare"] else TRAIN_EXTRA)
    if missing:
        print(
            f"marginface train needs the train extra ({', '.join(missing)} missing); "
            + INSTALL_HINT,
            file=sys.stderr,
        )
        return 2
    if args and args[0] == "prepare":
        return _prepare(args[1:])
    if args and args[0] == "export":
        return _export(args[1:])
    from training.config import describe_keys, load_config

    if any(a in ("-h", "--help", "help") for a in args[:1]) or "--help" in args:
        print(USAGE)
        print("\n".join(f"  {line}" for line in describe_keys()))
        return 0
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
    training = manifest.training or {}
    print(
        json.dumps(
            {
                "name": manifest.name,
                "sha256": manifest.sha256,
                "model_id": manifest.model_id,
                "exporter": training.get("exporter"),
                # what the export checked: ONNX Runtime against PyTorch on real faces
                "parity_min_cosine": training.get("parity_min_cosine"),
                "parity_faces": training.get("parity_faces"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
