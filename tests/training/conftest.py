"""A small real training set: 8 CelebA identities aligned by the service pipeline (once)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from service.vision.pipeline import FacePipeline
from tests.conftest import DATA
from training.data import prepare_dataset


@pytest.fixture(scope="session")
def celeba_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CSV of path,identity for the first 8 CelebA-299 identities (163 raw photos)."""
    root = tmp_path_factory.mktemp("celeba")
    with (DATA / "celeba299/labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    keep = sorted({r["identity"] for r in rows}, key=int)[:8]
    out = root / "labels.csv"
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "identity"])
        for r in rows:
            if r["identity"] in keep:
                writer.writerow([str(DATA / "celeba299" / r["path"]), r["identity"]])
    return out


@pytest.fixture(scope="session")
def aligned_subset(
    celeba_subset: Path, pipeline: FacePipeline, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The subset aligned to 112x112 crops."""
    out = tmp_path_factory.mktemp("aligned")
    prepare_dataset(celeba_subset, out, pipeline, workers=2, progress=False)
    return out
