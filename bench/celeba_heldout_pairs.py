"""Verification pairs among the CelebA-299 identities a fine-tuning run did not see.

Training with ``--data.max_identities=N`` uses the first N identity folders of the aligned tree
(sorted by name, ``training.data``); the others are held out. This writes, as the CSV that
``marginface eval pairs`` reads (absolute paths to the raw photos, so the service's own
pipeline detects and aligns them), every same-identity pair of the held-out identities and as
many different-identity pairs again times ``--impostor-ratio`` (sampled, seed 0).

Usage: python bench/celeba_heldout_pairs.py --aligned data/celeba299_aligned --skip-first 200 \
           [--data ../shared/data] [--impostor-ratio 5] > pairs.csv
"""

from __future__ import annotations

import argparse
import csv
import itertools
import random
import sys
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--aligned", required=True, help="the aligned training tree")
    parser.add_argument("--skip-first", type=int, required=True, help="identities trained on")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    parser.add_argument("--impostor-ratio", type=int, default=5)
    args = parser.parse_args()
    folders = sorted(d.name for d in Path(args.aligned).iterdir() if d.is_dir())
    held_out = set(folders[args.skip_first :])
    root = Path(args.data) / "celeba299"
    photos: dict[str, list[Path]] = defaultdict(list)
    for row in csv.DictReader((root / "labels.csv").open()):
        if row["identity"] in held_out:
            photos[row["identity"]].append((root / row["path"]).resolve())
    genuine = [
        (a, b) for paths in photos.values() for a, b in itertools.combinations(sorted(paths), 2)
    ]
    rng = random.Random(0)
    people = sorted(photos)
    impostor: set[tuple[Path, Path]] = set()
    while len(impostor) < args.impostor_ratio * len(genuine):
        p, q = rng.sample(people, 2)
        impostor.add((rng.choice(photos[p]), rng.choice(photos[q])))
    out = csv.writer(sys.stdout)
    out.writerow(["image_a", "image_b", "same"])
    out.writerows([str(a), str(b), 1] for a, b in genuine)
    out.writerows([str(a), str(b), 0] for a, b in sorted(impostor))
    print(
        f"{len(held_out)} held-out identities, {sum(map(len, photos.values()))} photos, "
        f"{len(genuine)} genuine and {len(impostor)} impostor pairs",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
