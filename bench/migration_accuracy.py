"""Is a migrated gallery as good as one re-enrolled from the original photos?

For each target model: N LFW people (two photos enrolled with SFace, the third held back) are
moved to the target with ``gallery migrate-model`` (from the face chips, or the kept photos with
``--source photo``), and the held-back photos are identified (rank-1, and matched at the
service's default FAR). The reference is a gallery enrolled with the target model directly from
the original photos. Also: the cosine between each face's migrated and re-enrolled embedding
(1.0: re-embedding from what was kept loses nothing).

    python bench/migration_accuracy.py --people 100 --to sface-2021dec-int8 \
        celeba299-iresnet18w16-arcface --out runs/migration_accuracy.json

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.app import create_app  # noqa: E402
from service.cli.model_move import migrate_model  # noqa: E402
from service.settings import Settings  # noqa: E402

LFW = ROOT.parent / "shared" / "data" / "lfw" / "images"
KEY = "bench-key-0123456789"


def people(n: int) -> list[str]:
    """The first ``n`` LFW people (by name) with at least three photos."""
    found = [p.name for p in sorted(LFW.iterdir()) if len(list(p.glob("*.jpg"))) >= 3]
    return found[:n]


def photo(person: str, number: int) -> bytes:
    return (LFW / person / f"{person}_{number:04d}.jpg").read_bytes()


def settings_for(folder: Path, model: str, source: str) -> Settings:
    privacy: dict[str, Any] = {"images_dir": folder / "images", "keep_images": source == "photo"}
    if source == "photo":
        privacy["keep_face_chips"] = False
    return Settings(
        models_dir=ROOT / "models",
        device="cpu",
        embedder={"model": model},  # type: ignore[arg-type]
        gallery={"path": folder / "gallery", "flush_interval_s": 3600},  # type: ignore[arg-type]
        privacy=privacy,  # type: ignore[arg-type]
        auth={"api_keys": [KEY]},  # type: ignore[arg-type]
    )


def enroll(c: TestClient, who: list[str]) -> int:
    enrolled = 0
    for person in who:
        c.post("/v1/subjects", json={"id": person, "name": person})
        files = [("files", (f"{n}.jpg", photo(person, n), "image/jpeg")) for n in (1, 2)]
        r = c.post(f"/v1/subjects/{person}/faces", files=files)
        enrolled += len(r.json().get("faces", [])) if r.status_code == 201 else 0
    return enrolled


def evaluate(c: TestClient, who: list[str]) -> dict[str, Any]:
    """Rank-1 and matched rates of the held-back photos, and each subject's embeddings."""
    rank1 = matched = probes = 0
    for person in who:
        r = c.post("/v1/identify", files={"image": ("p.jpg", photo(person, 3), "image/jpeg")})
        if r.status_code != 200 or not r.json()["faces"]:
            continue
        probes += 1
        face = r.json()["faces"][0]
        rank1 += bool(face["candidates"]) and face["candidates"][0]["subject_id"] == person
        matched += face["match"] is not None and face["match"]["subject_id"] == person
    return {"probes": probes, "rank1": rank1 / max(probes, 1), "matched": matched / max(probes, 1)}


def embeddings(settings: Settings, who: list[str]) -> dict[str, np.ndarray]:
    """Each subject's stored embeddings, in enrollment order."""
    from service.gallery import backends

    g = backends.open_gallery(settings.gallery, model_id="unused@x", embedding_dim=1)
    try:
        return {p: g.subject_embeddings(p, model_id=g.model_id)[1] for p in who}
    finally:
        g.close()


def fidelity(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Cosine between the same faces' embeddings in two galleries (median, 5th percentile)."""
    cos = [
        float(x @ y)
        for p in a
        if p in b and len(a[p]) == len(b[p])
        for x, y in zip(a[p], b[p], strict=True)
    ]
    if not cos:
        return {}
    return {
        "faces": len(cos),
        "median": round(float(np.median(cos)), 4),
        "p05": round(float(np.percentile(cos, 5)), 4),
    }


def one_target(target: str, who: list[str], source: str, work: Path) -> dict[str, Any]:
    moved_dir, ref_dir = work / f"{target}-moved", work / f"{target}-ref"
    base = settings_for(moved_dir, "sface-2021dec", source)
    with TestClient(create_app(base), headers={"X-API-Key": KEY}) as c:
        faces = enroll(c, who)
    args = argparse.Namespace(
        purge=False,
        rollback=False,
        to=target,
        dry_run=False,
        no_switch=False,
        allow_uncalibrated=True,
        batch=32,
        no_progress=True,
        json=True,
    )
    started, cpu = time.monotonic(), time.process_time()
    info, _, code = migrate_model(base, args)
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    assert code == 0, info
    with TestClient(create_app(base), headers={"X-API-Key": KEY}) as c:
        migrated = evaluate(c, who)
    reference = settings_for(ref_dir, target, source)
    with TestClient(create_app(reference), headers={"X-API-Key": KEY}) as c:
        enroll(c, who)
        reenrolled = evaluate(c, who)
    same_faces = fidelity(embeddings(base, who), embeddings(reference, who))
    return {
        "target": target,
        "faces": faces,
        "switched": info.get("switched"),
        "failed": info.get("failed"),
        "migration_wall_s": round(wall, 1),
        "migration_cpu_s": round(cpu, 1),
        "migrated": migrated,
        "reenrolled_from_originals": reenrolled,
        "cosine_migrated_vs_reenrolled": same_faces,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--to", nargs="+", default=["sface-2021dec-int8"])
    parser.add_argument("--source", choices=["chip", "photo"], default="chip")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    who = people(args.people)
    with tempfile.TemporaryDirectory() as tmp:
        results = [one_target(t, who, args.source, Path(tmp)) for t in args.to]
    report = {"people": len(who), "source": args.source, "results": results}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
