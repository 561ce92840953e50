"""The micro-batcher: concurrent callers get exactly their own rows, batched together."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.errors import Overloaded
from service.vision.batcher import MicroBatcher
from service.vision.image import decode_image
from service.vision.pipeline import FacePipeline
from tests.conftest import lfw


def test_concurrent_requests_are_batched_and_get_their_own_embeddings(
    pipeline: FacePipeline,
) -> None:
    names = ["Colin_Powell", "Tony_Blair", "Serena_Williams", "George_W_Bush"]
    crops = []
    for name in names:
        for number in (1, 2, 3, 4):
            image = decode_image(lfw(name, number).read_bytes())
            face = max(pipeline.detect(image), key=lambda d: d.area)
            crops.append(pipeline.align(image, face.landmarks))
    expected = pipeline.embedder.embed(crops)
    sizes: list[int] = []
    batcher = MicroBatcher(
        pipeline.embedder.embed, max_batch=8, max_wait_ms=50, on_batch=sizes.append
    )
    try:
        start = threading.Barrier(len(crops))

        def one(i: int) -> np.ndarray:
            start.wait()
            # requests of one and of two crops, as single- and multi-face images send them
            return batcher.embed([crops[i]] if i % 2 else [crops[i], crops[i]])

        with ThreadPoolExecutor(len(crops)) as pool:
            results = list(pool.map(one, range(len(crops))))
    finally:
        batcher.close()
    for i, got in enumerate(results):
        assert got.shape == ((1 if i % 2 else 2), 128)
        for row in got:
            np.testing.assert_allclose(row, expected[i], atol=1e-5)
    assert sum(sizes) == 24 and max(sizes) > 2 and max(sizes) <= 8


def test_a_failing_batch_fails_every_caller_and_the_batcher_goes_on() -> None:
    calls = 0

    def flaky(crops: list[np.ndarray]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("device lost")
        return np.ones((len(crops), 4), np.float32)

    batcher = MicroBatcher(flaky, max_batch=4, max_wait_ms=1)
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            batcher.embed([np.zeros((2, 2, 3), np.uint8)])
        assert batcher.embed([np.zeros((2, 2, 3), np.uint8)]).shape == (1, 4)
    finally:
        batcher.close()


def test_a_full_queue_answers_overloaded_instead_of_waiting() -> None:
    release = threading.Event()
    calls: list[int] = []

    def slow(crops: list[np.ndarray]) -> np.ndarray:
        calls.append(len(crops))
        release.wait(10)
        return np.zeros((len(crops), 4), np.float32)

    batcher = MicroBatcher(slow, max_batch=1, max_wait_ms=0, max_queue=2, timeout_s=5)
    crop = [np.zeros((2, 2, 3), np.uint8)]
    with ThreadPoolExecutor(3) as pool:
        deadline = time.monotonic() + 10  # a busy machine starts the threads late
        futures = [pool.submit(batcher.embed, crop)]  # taken by the worker, which blocks on it
        while (batcher.queued() > 0 or not calls) and time.monotonic() < deadline:
            time.sleep(0.01)
        futures += [pool.submit(batcher.embed, crop) for _ in range(2)]  # these two wait
        while batcher.queued() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(Overloaded) as info:
            batcher.embed(crop)
        assert info.value.details["retry_after_s"] >= 1
        release.set()
        assert all(f.result(timeout=10).shape == (1, 4) for f in futures)
    batcher.close()
