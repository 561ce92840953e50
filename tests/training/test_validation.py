"""LFW validation during training: balanced pairs whatever the limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DATA
from training.config import load_config
from training.validation import Validator


@pytest.mark.parametrize("limit", [20, 100, 3000])
def test_a_pair_limit_keeps_same_and_different_pairs_balanced(tmp_path: Path, limit: int) -> None:
    """Each fold of pairs.txt lists its 300 same-person pairs first: taking the first N of a
    fold kept only same pairs for any limit up to 3,000 (accuracy meaningless, TAR skipped)."""
    config = load_config(
        None,
        [
            f"--data.root={tmp_path}",
            f"--data.val_images={DATA / 'lfw' / 'images'}",
            f"--data.val_pairs={DATA / 'lfw' / 'pairs.txt'}",
            f"--data.val_pair_limit={limit}",
        ],
    )
    pairs = Validator.select_pairs(config)
    assert len(pairs) == limit
    for fold in range(10):
        in_fold = [p for p in pairs if p.fold == fold]
        same = sum(p.same for p in in_fold)
        assert same == len(in_fold) - same == limit // 20
