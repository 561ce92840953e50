"""bench/celeba_heldout_bin.py: the held-out pairs a model is chosen on never include a person
the run trained on, are half same-person, and round-trip through the service's .bin reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bench.celeba_heldout_bin import held_out_people, sample_pairs
from service.bin_dataset import read_bin, write_bin

GLINT = Path(__file__).resolve().parents[1] / "../shared/data/glint24_aligned"


def test_held_out_pairs_use_only_the_people_after_the_training_split(tmp_path: Path) -> None:
    people = held_out_people(GLINT, skip_first=20)
    trained = sorted(d.name for d in GLINT.iterdir() if d.is_dir())[:20]
    assert len(people) == 4 and not set(people) & set(trained)
    pairs = sample_pairs(people, 200)
    assert len(pairs) == 200 and sum(same for _, _, same in pairs) == 100
    for a, b, same in pairs:
        assert a.parent.name in people and b.parent.name in people
        assert (a.parent == b.parent) == same and a != b
    # shuffled: insightface's contiguous folds each hold both kinds
    assert 0 < sum(same for _, _, same in pairs[:20]) < 20
    assert sample_pairs(people, 200) == pairs  # seeded
    crops = [np.asarray(Image.open(p).convert("RGB")) for a, b, _ in pairs[:10] for p in (a, b)]
    write_bin(tmp_path / "heldout.bin", crops, [s for _, _, s in pairs[:10]])
    back = read_bin(tmp_path / "heldout.bin")
    assert back.issame == [s for _, _, s in pairs[:10]]
    assert back.decode().shape == (20, 112, 112, 3)
