"""``marginface cluster DIR``: group the faces of a folder of photos into people."""

from __future__ import annotations

import argparse

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


def register(sub: Subcommands) -> None:
    """Add the command."""
    from service.clustering import DEFAULT_FAR, DEFAULT_NEIGHBOURS, available

    p = sub.add_parser("cluster", help="group the faces of a folder tree of photos into people")
    p.add_argument("root", help="any folder tree of photos (links are not followed)")
    p.add_argument(
        "--far",
        type=float,
        default=DEFAULT_FAR,
        help="how often two strangers may be linked, from the model's calibration (default: "
        "0.1 / the number of faces, so about one false link per ten faces)",
    )
    p.add_argument(
        "--faces",
        choices=["all", "central"],
        default="all",
        help="every face of each photo (default), or only the one nearest the centre",
    )
    p.add_argument(
        "--algorithm",
        choices=available(),
        default="chinese-whispers",
        help="how linked faces are grouped (default: chinese-whispers, as face_recognition and "
        "dlib users know it; docs/benchmarks.md compares them)",
    )
    p.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS, help="k of the graph")
    p.add_argument("--model", help="recognizer (default: the embedder setting)")
    add_worker_options(p)
    add_common(p)
    p.set_defaults(func=cmd_cluster)


def cmd_cluster(args: argparse.Namespace) -> int:
    """Find, embed and cluster the faces; print the clusters."""
    from service.calibration import threshold_for_far
    from service.cli.common import with_recognizer
    from service.clustering import cluster_faces, edge_threshold, find_faces
    from service.recognition import build_pipeline

    root = existing(args.root)
    settings = with_recognizer(settings_from(args), args.model)
    pipeline = build_pipeline(settings, batching=False)
    calibration = pipeline.embedder.manifest.calibration
    if args.far is not None:
        threshold_for_far(calibration, args.far)  # a FAR the calibration cannot give: refused now
    try:
        with progress_bar("finding faces", disable=args.no_progress) as progress:
            found = find_faces(
                root,
                settings,
                pipeline,
                which=args.faces,
                processes=args.processes,
                progress=progress,
            )
    finally:
        pipeline.close()
    threshold, far = edge_threshold(calibration, args.far, len(found.faces))
    result = cluster_faces(
        found.faces,
        threshold=threshold,
        far=far,
        algorithm=args.algorithm,
        neighbours=args.neighbours,
    )
    payload = result.to_dict() | {
        "root": str(root),
        "model": pipeline.model_id,
        "photos": found.photos,
        "photos_without_face": found.without_face,
        "unreadable": found.unreadable,
        "skipped_links": found.skipped,
    }
    def photos(members: list[int]) -> str:
        """Every member's photo (the representative first), up to 6: who is in the cluster."""
        files = [found.faces[i].file for i in members]
        return ", ".join(files[:6]) + (f" (+{len(files) - 6} more)" if len(files) > 6 else "")

    rows = [
        (n, len(c.members), f"{c.cohesion:.3f}",
         photos([c.representative, *(m.face for m in c.members if m.face != c.representative)]))
        for n, c in enumerate(result.clusters[:50])
    ]  # fmt: skip
    view = table(
        f"{len(result.clusters)} clusters, {len(result.alone)} faces alone, of {len(found.faces)} "
        f"faces in {found.photos} photos ({len(found.without_face)} without a face); edges at "
        f"cosine >= {threshold:.3f} (FAR {far:g})",
        ("cluster", "faces", "cohesion", "photos (representative first)"),
        rows,
    )
    emit(args, payload, view)
    return 0
