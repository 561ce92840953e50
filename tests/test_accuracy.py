"""Accuracy floors of the default models, measured through the service's own code paths."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.evaluation import accuracy_at, read_lfw_pairs
from service.recognition import Recognition
from service.settings import Settings
from service.vision.pipeline import FacePipeline
from tests.conftest import DATA

pytestmark = pytest.mark.slow


def test_lfw_first_fold_at_the_manifest_threshold(pipeline: FacePipeline) -> None:
    """300 same + 300 different LFW pairs, judged as `marginface verify` judges them."""
    pairs = [p for p in read_lfw_pairs(DATA / "lfw/pairs.txt", DATA / "lfw/images") if p.fold == 0]
    assert len(pairs) == 600 and sum(p.same for p in pairs) == 300
    rec = Recognition(Settings(device="cpu"), pipeline, gallery=None)

    @cache
    def embedding(path: str) -> np.ndarray:
        return rec.one_face((DATA / path).read_bytes(), policy="largest").embedding

    scores = np.array(
        [
            float(embedding(str(p.a.relative_to(DATA))) @ embedding(str(p.b.relative_to(DATA))))
            for p in pairs
        ]
    )
    same = np.array([p.same for p in pairs])
    threshold = rec.threshold().value
    accuracy = accuracy_at(scores, same, threshold)
    print(f"LFW fold 1: accuracy {accuracy:.4f} at threshold {threshold}")
    assert accuracy >= 0.97


def test_glint_open_set_identification(client: TestClient) -> None:
    """12 people enrolled with 5 aligned crops each; 20 probes of each of the 24 people."""
    root = DATA / "glint24_aligned"
    people = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(people) == 24
    enrolled, strangers = people[:12], people[12:]

    def photos(name: str) -> list:
        return sorted((root / name).glob("*.jpg"), key=lambda p: int(p.stem))

    for name in enrolled:
        assert client.post("/v1/subjects", json={"id": name, "name": name}).status_code == 201
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos(name)[:5]]
        r = client.post(f"/v1/subjects/{name}/faces", files=files, params={"aligned": "true"})
        assert r.status_code == 201, r.text

    def decide(name: str) -> list[str | None]:
        out = []
        for p in photos(name)[5:25]:
            r = client.post(
                "/v1/identify",
                files={"image": (p.name, p.read_bytes(), "image/jpeg")},
                data={"aligned": "true"},
            )
            [face] = r.json()["faces"]
            out.append(face["match"]["subject_id"] if face["match"] else None)
        return out

    enrolled_decisions = {name: decide(name) for name in enrolled}
    stranger_decisions = [d for name in strangers for d in decide(name)]
    right = sum(d == name for name, ds in enrolled_decisions.items() for d in ds)
    total = sum(len(ds) for ds in enrolled_decisions.values())
    unknown = sum(d is None for d in stranger_decisions)
    print(
        f"Glint-24: rank-1 {right}/{total} enrolled probes, "
        f"unknown {unknown}/{len(stranger_decisions)} stranger probes"
    )
    assert right / total >= 0.95
    assert unknown / len(stranger_decisions) >= 0.90
