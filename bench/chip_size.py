"""What a face chip costs per face (JSON): disk bytes, plain and encrypted, and the time to cut
and encode one.

Every enrollment keeps one chip per face by default (``service.vision.chip``, issue 26): this
reads ``--faces`` LFW photos (one per person, people in name order, every ``--stride``-th), finds
the enrolled face as the service does (``choose_face``, policy largest), and cuts, encodes and
encrypts its chip as the vault stores it (``chip_jpeg`` + Fernet). Medians, with CPU seconds
beside wall seconds for the cut + encode step.

Usage: python bench/chip_size.py [--faces 50] [--stride 50] [--lfw ../shared/data/lfw/images]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402

from service.recognition import build_pipeline  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.vision.chip import chip_jpeg  # noqa: E402
from service.vision.image import decode_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=50)
    parser.add_argument("--stride", type=int, default=50)
    parser.add_argument("--lfw", type=Path, default=ROOT.parent / "shared/data/lfw/images")
    args = parser.parse_args()
    pipeline = build_pipeline(Settings(models_dir=ROOT / "models", device="cpu"), batching=False)
    fernet = Fernet(Fernet.generate_key())
    people = sorted(p for p in args.lfw.iterdir() if p.is_dir())[:: args.stride][: args.faces]
    plain, encrypted, sides, photo_bytes, wall_ms, cpu_ms = [], [], [], [], [], []
    for person in people:
        photo = sorted(person.glob("*.jpg"))[0]
        data = photo.read_bytes()
        image = decode_image(data)
        face = pipeline.choose_face(image, policy="largest").face
        wall, cpu = time.perf_counter(), time.process_time()
        chip = chip_jpeg(image, face.box)
        wall_ms.append((time.perf_counter() - wall) * 1000)
        cpu_ms.append((time.process_time() - cpu) * 1000)
        plain.append(len(chip))
        encrypted.append(len(fernet.encrypt(chip)))
        sides.append(decode_image(chip).shape[0])
        photo_bytes.append(len(data))
    print(
        json.dumps(
            {
                "faces": len(plain),
                "chip_bytes_median": statistics.median(plain),
                "chip_bytes_min": min(plain),
                "chip_bytes_max": max(plain),
                "encrypted_bytes_median": statistics.median(encrypted),
                "chip_side_px_median": statistics.median(sides),
                "photo_bytes_median": statistics.median(photo_bytes),
                "cut_encode_wall_ms_median": round(statistics.median(wall_ms), 3),
                "cut_encode_cpu_ms_median": round(statistics.median(cpu_ms), 3),
                "loadavg": [round(v, 2) for v in os.getloadavg()],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
