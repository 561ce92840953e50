"""``marginface eval bin`` and ``eval write-bin``: insightface's verification .bin files (the
format lives in ``service.bin_dataset``, the protocol's arithmetic in ``service.evaluation``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli.common import emit, existing, settings_from, with_recognizer


def register(esub: argparse._SubParsersAction) -> tuple[argparse.ArgumentParser, ...]:
    """Add ``eval bin`` and ``eval write-bin``; returns their parsers (the caller adds the
    common options)."""
    binary = esub.add_parser(
        "bin",
        help="an insightface verification .bin (lfw.bin, cfp_fp.bin, agedb_30.bin, ...): "
        "10-fold accuracy, best threshold, TAR at FAR on its aligned crops",
    )
    binary.add_argument("file", help="the .bin file")
    binary.add_argument("--model", help="recognizer (default: the configured one)")
    binary.add_argument("--flip", action="store_true", help="test-time flip: f(x) + f(flip(x))")
    binary.set_defaults(func=cmd_eval_bin)
    write_bin = esub.add_parser(
        "write-bin",
        help="align LFW-layout photos and pairs with our detector and aligner into a .bin",
    )
    write_bin.add_argument("--images", required=True, help="image root (LFW layout)")
    write_bin.add_argument("--pairs", required=True, help="pairs file (LFW pairs.txt format)")
    write_bin.add_argument("--out", required=True, help="the .bin to write (e.g. lfw.bin)")
    write_bin.add_argument(
        "--pair-limit",
        type=int,
        default=0,
        help="only this many pairs, a multiple of 20: an equal share of each fold, half same "
        "and half different (0: all)",
    )
    write_bin.add_argument("--model", help="recognizer whose template aligns (default: configured)")
    write_bin.set_defaults(func=cmd_eval_write_bin)
    return binary, write_bin


def cmd_eval_bin(args: argparse.Namespace) -> int:
    """The verification protocol on a .bin's aligned crops (no detection: they are aligned)."""
    import numpy as np

    from service.bin_dataset import read_bin
    from service.evaluation import verification_report
    from service.recognition import build_pipeline

    data = read_bin(existing(args.file))
    settings = with_recognizer(settings_from(args), args.model)
    if args.flip:
        settings = settings.model_copy(
            update={"embedder": settings.embedder.model_copy(update={"flip_tta": True})}
        )
    pipeline = build_pipeline(settings, batching=False)
    crops = data.decode()
    embeddings = np.concatenate(
        [pipeline.embed_crops(list(crops[i : i + 64])) for i in range(0, len(crops), 64)]
    )
    scores = np.einsum("ij,ij->i", embeddings[0::2], embeddings[1::2])
    report = verification_report(scores, np.array(data.issame), data.folds())
    report.update(
        {
            "dataset": Path(args.file).name,
            "model_id": pipeline.model_id,
            "flip_tta": args.flip,
            "folds": "10 contiguous (insightface's KFold(10, shuffle=False))",
        }
    )
    tar = report["tar_at_far"]["1e-02"]  # type: ignore[index]
    text = (
        f"{Path(args.file).name}: 10-fold accuracy {report['kfold_accuracy_mean']:.4f} ± "
        f"{report['kfold_accuracy_std']:.4f}, best threshold {report['best_threshold']:.4f}, "
        f"TAR at FAR 1e-2 {tar.get('tar')}"
    )
    emit(args, report, text)
    return 0


def cmd_eval_write_bin(args: argparse.Namespace) -> int:
    """Write our own .bin (insightface's format) from photos and an LFW-layout pairs file."""
    from service.bin_dataset import crops_for_pairs, in_bin_order, write_bin
    from service.errors import InvalidRequest
    from service.evaluation import balanced_pairs, read_lfw_pairs
    from service.recognition import build_pipeline

    if args.pair_limit < 0 or args.pair_limit % 20:
        raise InvalidRequest(f"--pair-limit must be a multiple of 20, got {args.pair_limit}")
    pairs = read_lfw_pairs(existing(args.pairs), existing(args.images))
    pairs = in_bin_order(balanced_pairs(pairs, args.pair_limit) if args.pair_limit else pairs)
    pipeline = build_pipeline(with_recognizer(settings_from(args), args.model), batching=False)
    crops, no_face = crops_for_pairs(pipeline, pairs, progress=not args.json)
    write_bin(Path(args.out), crops, [p.same for p in pairs])
    payload = {
        "out": args.out,
        "pairs": len(pairs),
        "images": len(crops),
        "bytes": Path(args.out).stat().st_size,
        "images_without_face": no_face,
        "aligned_by": pipeline.model_id,
    }
    emit(args, payload, f"wrote {len(pairs)} pairs to {args.out} ({len(no_face)} without a face)")
    return 0
