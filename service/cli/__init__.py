"""The ``marginface`` command; one module per command group, each adding its own parsers."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from service.cli import cluster, evaluate, gallery, imports, keys, recognize, registry, serve
from service.cli.common import report_error
from service.errors import MarginFaceError

GROUPS = (serve, registry, recognize, gallery, cluster, keys, evaluate, imports)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="marginface",
        description="MarginFace: face detection, verification and identification, its REST API, "
        "its gallery and its models. Every command takes --help; --json prints one JSON object on "
        "stdout (logs go to stderr); an error exits with status 2 and prints the API's error body.",
        epilog="marginface train --help: train your own recognizer (needs the train extra: "
        "pip install -e '.[train]'); docs: README.md",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    # handed to training.train before parsing (main below); listed here so --help shows it
    sub.add_parser(
        "train",
        help="train, fine-tune or export a recognizer (needs the train extra): "
        "marginface train --help",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marginface`` command."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["train"]:
        # The service never imports training (or torch): hand over to its own entry point.
        import subprocess

        return subprocess.call([sys.executable, "-m", "training.train", *args_list[1:]])
    args = build_parser().parse_args(args_list)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s"
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MarginFaceError as exc:
        report_error(args, exc)
        return 2
