"""The decode memory budget: shares wait for each other, an image bigger than the budget runs
alone, and a share that does not come free in time is 503 overloaded."""

from __future__ import annotations

import threading

import pytest

from service.errors import Overloaded
from service.memory import MemoryBudget, decode_bytes, give_back_freed_memory


def test_a_share_waits_then_is_overloaded_when_nothing_comes_free() -> None:
    budget = MemoryBudget(total_bytes=1000, wait_s=0.05)
    with budget.lease() as first:
        first.take(800)
        with budget.lease() as second, pytest.raises(Overloaded) as refused:
            second.take(300)
        assert refused.value.status == 503
        assert budget.held_bytes == 800
    assert budget.held_bytes == 0


def test_a_shrunk_share_lets_the_next_image_in() -> None:
    budget = MemoryBudget(total_bytes=1000, wait_s=5)
    admitted = threading.Event()
    with budget.lease() as first:
        first.take(900)

        def second() -> None:
            with budget.lease() as lease:
                lease.take(600)
                admitted.set()

        waiter = threading.Thread(target=second)
        waiter.start()
        assert not admitted.wait(0.2)  # 900 + 600 > 1000: it waits
        first.shrink_to(300)  # decoded: only the array stays
        assert admitted.wait(5)
        waiter.join()
    assert budget.held_bytes == 0


def test_an_image_bigger_than_the_budget_runs_alone() -> None:
    budget = MemoryBudget(total_bytes=1000, wait_s=0.05)
    with budget.lease() as lease:
        lease.take(decode_bytes(6000, 6000))
        assert budget.held_bytes == 1000
    assert budget.held_bytes == 0


def test_freed_memory_is_given_back_on_linux() -> None:
    assert give_back_freed_memory() is True
