"""``marginface import compreface``: copy a running CompreFace's subjects and examples into the
gallery, through CompreFace's own API (``service.compreface_import``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from service.cli.common import Subcommands, add_common, emit, progress_bar, table
from service.cli.recognize import recognition
from service.compreface_import import CompreFaceSource, import_compreface


def register(sub: Subcommands) -> None:
    """Add the command group."""
    imp = sub.add_parser("import", help="move from another face service")
    isub = imp.add_subparsers(dest="import_command", required=True)
    cf = isub.add_parser(
        "compreface",
        help="copy a CompreFace's subjects and example images (resumable; docs/compreface.md)",
    )
    cf.add_argument("url", help="CompreFace's address, e.g. http://localhost:8000")
    cf.add_argument(
        "--key-env",
        default="COMPREFACE_API_KEY",
        help="environment variable holding the recognition service's API key (default: "
        "COMPREFACE_API_KEY; never on the command line, where ps would show it)",
    )
    cf.add_argument("--state", default="compreface-import.state.jsonl", help="resume file")
    cf.add_argument("--report", default="compreface-import-report.json", help="report (JSON)")
    cf.add_argument("--page-size", type=int, default=100, help="examples per listing page")
    cf.add_argument("--gallery", help="gallery folder (default: var/gallery)")
    cf.add_argument("--no-progress", action="store_true", help="no progress bar")
    cf.set_defaults(func=cmd_import_compreface)
    add_common(cf)


def cmd_import_compreface(args: argparse.Namespace) -> int:
    """Copy every subject and example; exit 1 while some downloads failed (run it again)."""
    key = os.environ.get(args.key_env, "")
    if not key:
        raise SystemExit(f"error: set {args.key_env} to the CompreFace recognition service's key")
    source = CompreFaceSource(args.url, key)
    rec = recognition(args, with_gallery=True)
    try:
        with progress_bar("importing", disable=args.no_progress) as progress:
            report = import_compreface(
                rec, source, Path(args.state), page_size=args.page_size, progress=progress
            )
    finally:
        rec.gallery.close()
    payload = report.to_dict()
    Path(args.report).write_text(json.dumps(payload, indent=1))
    summary = {k: v for k, v in payload.items() if k != "items"} | {"report": args.report}
    rows = [(k.replace("_", " "), v) for k, v in report.counts.items()]
    rows.append(("subjects created", len(report.subjects_created)))
    view = table(
        f"{len(report.examples)} CompreFace examples in {report.seconds:.1f} s; "
        f"per example: {args.report}"
        + ("" if payload["complete"] else "; some downloads failed: run the command again"),
        ("outcome", "examples"),
        rows,
    )
    emit(args, summary, view)
    return 0 if payload["complete"] else 1
