"""What every command shares: settings from the environment and the command line, output as one
JSON object or as readable text and tables, and input files read with a clear error."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from service.errors import MarginFaceError
from service.settings import Settings

console = Console(highlight=False, soft_wrap=True)
#: what each command group's ``register`` adds its parsers to
Subcommands = argparse._SubParsersAction  # the type argparse's add_subparsers returns


class MissingFile(MarginFaceError):
    """A path given on the command line does not exist (the CLI's own error)."""

    code = "file_not_found"
    status = 404


def add_common(
    parser: argparse.ArgumentParser, *, models_dir: bool = True, device: bool = True
) -> None:
    """The options a command takes: ``--json`` always; ``--models-dir`` where it reads the model
    registry and ``--device`` where it runs a model (elsewhere they would mean nothing)."""
    parser.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    if models_dir:
        parser.add_argument(
            "--models-dir", help="model registry folder (default: MARGINFACE_MODELS_DIR or models)"
        )
    if device:
        parser.add_argument(
            "--device",
            choices=["auto", "cpu", "cuda"],
            help="where the models run: auto takes CUDA when it works, cuda refuses to start "
            "without it (default: MARGINFACE_DEVICE or auto)",
        )


def add_worker_options(parser: argparse.ArgumentParser, *, threads_note: str = "") -> None:
    """``--processes`` and ``--no-progress``, for the commands that analyse a tree of photos."""
    parser.add_argument(
        "--processes",
        type=int,
        default=min(os.cpu_count() or 1, 4),
        help="worker processes, each with its own models and one compute thread (default: the "
        f"cores, at most 4){threads_note}",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@contextmanager
def progress_bar(desc: str, *, disable: bool) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on stderr, fed by the (done, total) callback the indexer and clusterer take."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="img", desc=desc, disable=disable, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)  # tqdm throttles the redraws

    try:
        yield progress
    finally:
        bar.close()


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with command-line overrides (given to the constructor,
    merged with the environment's sections: what follows them, such as the images folder that
    defaults to one beside the gallery, follows the command line too)."""
    overrides: dict[str, Any] = {}
    if getattr(args, "models_dir", None):
        overrides["models_dir"] = Path(args.models_dir)
    if getattr(args, "device", None):
        overrides["device"] = args.device
    if getattr(args, "gallery", None):
        overrides["gallery"] = {"path": Path(args.gallery)}
    return Settings(**overrides)


def with_recognizer(settings: Settings, model: str | None) -> Settings:
    """``settings`` with another recognizer (``--model``), or unchanged."""
    if not model:
        return settings
    return settings.with_recognizer(model)


def read(path: str) -> bytes:
    """A file's bytes, or MissingFile naming it."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise MissingFile(f"no such file: {path}", path=path) from None
    except IsADirectoryError:
        raise MissingFile(f"{path} is a folder, not a file", path=path) from None


def existing(path: str) -> Path:
    """A folder or file that must exist, or MissingFile naming it."""
    p = Path(path)
    if not p.exists():
        raise MissingFile(f"no such file or folder: {path}", path=path)
    return p


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str | Table) -> None:
    """One JSON object (``--json``), else the text or table."""
    if args.json:
        print(json.dumps(payload))
    elif isinstance(text, Table):
        console.print(text)
    else:
        print(text)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    """A readable table."""
    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*("" if v is None else str(v) for v in row))
    return out


def report_error(args: argparse.Namespace, exc: MarginFaceError) -> None:
    """The API's error body on stdout with ``--json``, else one line on stderr."""
    if getattr(args, "json", False):
        print(json.dumps(exc.to_dict()))
    else:
        print(f"error: {exc.message}", file=sys.stderr)
