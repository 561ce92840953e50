"""insightface's verification .bin: our writer and reader, a real lfw.bin made from
../shared/data/lfw by our own detector and aligner, and ``eval bin`` against ``eval lfw``."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.bin_dataset import BinFormatError, fold_of, read_bin, write_bin
from service.evaluation import balanced_pairs, read_lfw_pairs
from tests.conftest import DATA, ROOT

CLI = [sys.executable, "-m", "service.cli"]
PAIRS = 40  # 2 same and 2 different pairs in each of the 10 folds


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [*CLI, *args, "--models-dir", str(ROOT / "models"), "--device", "cpu", "--json"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.fixture(scope="session")
def lfw_subset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 40-pair LFW pairs file (same format as pairs.txt) and the lfw.bin our `eval write-bin`
    makes from it (the full 6,000-pair file is 62 MB and minutes of aligning: not in git)."""
    root = tmp_path_factory.mktemp("lfw_bin")
    pairs = balanced_pairs(
        read_lfw_pairs(DATA / "lfw/pairs.txt", DATA / "lfw/images"), PAIRS
    )  # fold by fold, same pairs first: pairs.txt's own layout

    def ref(path: Path) -> tuple[str, str]:
        return path.parent.name, str(int(path.stem.rsplit("_", 1)[1]))

    lines = [f"10 {PAIRS // 20}"]
    for p in pairs:
        (na, ia), (nb, ib) = ref(p.a), ref(p.b)
        lines.append(f"{na}\t{ia}\t{ib}" if p.same else f"{na}\t{ia}\t{nb}\t{ib}")
    pairs_file = root / "pairs.txt"
    pairs_file.write_text("\n".join(lines) + "\n")
    out = root / "lfw.bin"
    proc = cli(
        "eval", "write-bin", "--images", str(DATA / "lfw/images"), "--pairs", str(pairs_file),
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads(proc.stdout)
    assert written["pairs"] == PAIRS and written["images"] == 2 * PAIRS
    return pairs_file, out


def test_written_bin_is_insightfaces_format(lfw_subset: tuple[Path, Path]) -> None:
    """What insightface's ``load_bin`` does: ``pickle.load(f, encoding='bytes')`` gives a list of
    encoded 112x112 images (two per pair) and the issame list."""
    _, path = lfw_subset
    with path.open("rb") as fh:
        images, issame = pickle.load(fh, encoding="bytes")
    assert len(images) == 2 * len(issame) == 2 * PAIRS
    assert all(isinstance(x, bytes) for x in images)
    assert issame == ([True] * 2 + [False] * 2) * 10
    with Image.open(io.BytesIO(images[0])) as img:
        assert img.size == (112, 112) and img.format == "JPEG"
    data = read_bin(path)
    assert data.issame == issame and data.images == images
    assert data.decode().shape == (2 * PAIRS, 112, 112, 3)


def test_eval_bin_agrees_with_eval_lfw(lfw_subset: tuple[Path, Path], tmp_path: Path) -> None:
    """The same pairs, scored from our lfw.bin's crops and from the raw photos through the
    pipeline: the crops are the same alignment (JPEG-stored), so the verdicts agree. The
    full 6,000 pairs are compared in docs/benchmarks.md (within 0.1 point)."""
    pairs_file, path = lfw_subset
    by_bin = cli("eval", "bin", str(path), "--model", "sface-2021dec")
    assert by_bin.returncode == 0, by_bin.stderr[-3000:]
    by_lfw = cli(
        "eval", "lfw", "--images", str(DATA / "lfw/images"), "--pairs", str(pairs_file),
        "--model", "sface-2021dec", "--out", str(tmp_path / "eval"),
    )  # fmt: skip
    assert by_lfw.returncode == 0, by_lfw.stderr[-3000:]
    a, b = json.loads(by_bin.stdout), json.loads(by_lfw.stdout)
    assert a["pairs"] == b["pairs"] == PAIRS
    assert a["model_id"] == b["model_id"]
    one_pair = 1 / PAIRS
    assert abs(a["kfold_accuracy_mean"] - b["kfold_accuracy_mean"]) <= one_pair
    assert abs(a["best_threshold_accuracy"] - b["best_threshold_accuracy"]) <= one_pair
    assert abs(a["best_threshold"] - b["best_threshold"]) < 0.05
    assert a["kfold_accuracy_mean"] >= 0.9  # SFace on LFW: a real model on real crops
    assert set(a["tar_at_far"]) == {"1e-01", "1e-02", "1e-03"}


def test_round_trip_and_insightfaces_folds(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(6)]
    write_bin(tmp_path / "x.bin", crops, [True, False, True])
    data = read_bin(tmp_path / "x.bin")
    assert data.issame == [True, False, True] and data.decode().shape == (6, 112, 112, 3)
    # sklearn's KFold(10, shuffle=False): contiguous, the first n % 10 folds one longer
    assert np.bincount(fold_of(6000)).tolist() == [600] * 10
    assert np.bincount(fold_of(13)).tolist() == [2, 2, 2] + [1] * 7
    assert (np.diff(fold_of(6000)) >= 0).all()
    with pytest.raises(ValueError, match="two per pair"):
        write_bin(tmp_path / "y.bin", crops[:5], [True, False, True])


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.getcwd, ())  # type: ignore[return-value]


def test_a_pickle_that_names_code_is_refused(tmp_path: Path) -> None:
    """A .bin is a pickle: the reader must not run what a hostile file names."""
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_RunsCode(), b"x"], [True])))
    with pytest.raises(BinFormatError, match="refusing to load"):
        read_bin(path)
    (tmp_path / "junk.bin").write_bytes(b"not a pickle at all")
    proc = cli("eval", "bin", str(tmp_path / "junk.bin"))
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["code"] == "invalid_bin"
