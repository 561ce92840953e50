"""A verification .bin of CelebA-299 identities a run did not train on, for choosing a model on
data other than the LFW it is reported on.

Training with ``--data.max_identities=N`` uses the first N identity folders of the aligned tree
(sorted by name, ``training.data``); the rest are held out. This samples equal numbers of
same-identity and different-identity pairs among the held-out people's aligned crops (seed 0),
shuffles them so that insightface's 10 contiguous folds each hold a random tenth, and writes
insightface's .bin format (``service.bin_dataset``), which ``--data.val_bins`` validates on
during training and ``marginface eval bin`` scores afterwards.

Usage: python bench/celeba_heldout_bin.py --aligned data/celeba299_aligned --skip-first 249 \
           --pairs 6000 --out data/celeba299_heldout50.bin
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.bin_dataset import write_bin

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def held_out_people(aligned: Path, skip_first: int) -> dict[str, list[Path]]:
    """The identity folders after the first ``skip_first`` (the training split's order), with
    their crops."""
    folders = sorted(d for d in aligned.iterdir() if d.is_dir())
    return {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in folders[skip_first:]
    }


def sample_pairs(
    people: dict[str, list[Path]], pairs: int, seed: int = 0
) -> list[tuple[Path, Path, bool]]:
    """``pairs // 2`` genuine pairs (sampled from all same-identity pairs) and as many impostor
    pairs (two people, one photo each), shuffled."""
    rng = random.Random(seed)
    genuine = [(a, b) for paths in people.values() for a, b in itertools.combinations(paths, 2)]
    half = pairs // 2
    if len(genuine) < half:
        raise SystemExit(f"only {len(genuine)} same-identity pairs among the held-out people")
    chosen: list[tuple[Path, Path, bool]] = [(a, b, True) for a, b in rng.sample(genuine, half)]
    names = sorted(n for n, paths in people.items() if paths)
    impostor: set[tuple[Path, Path]] = set()
    while len(impostor) < half:
        p, q = rng.sample(names, 2)
        impostor.add((rng.choice(people[p]), rng.choice(people[q])))
    chosen += [(a, b, False) for a, b in sorted(impostor)]
    rng.shuffle(chosen)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--aligned", required=True, type=Path, help="the aligned training tree")
    parser.add_argument("--skip-first", type=int, required=True, help="identities trained on")
    parser.add_argument("--pairs", type=int, default=6000, help="half genuine, half impostor")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    people = held_out_people(args.aligned, args.skip_first)
    pairs = sample_pairs(people, args.pairs)
    crops = [
        np.asarray(Image.open(p).convert("RGB").resize((112, 112)))
        for a, b, _ in pairs
        for p in (a, b)
    ]
    write_bin(args.out, crops, [same for _, _, same in pairs])
    print(
        json.dumps(
            {
                "out": str(args.out),
                "held_out_identities": len(people),
                "photos": sum(map(len, people.values())),
                "first_held_out": min(people),
                "pairs": len(pairs),
                "genuine": sum(s for _, _, s in pairs),
            }
        )
    )


if __name__ == "__main__":
    main()
