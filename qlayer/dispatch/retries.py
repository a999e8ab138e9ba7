"""Retries of provider calls: exponential backoff with jitter, retryable errors only."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from qlayer.providers.base import ProviderError

T = TypeVar("T")


def backoff_delays(
    attempts: int,
    base_delay: float,
    max_delay: float = 60.0,
    *,
    jitter: Callable[[], float] | None = None,
) -> list[float]:
    """Delays before retries: ``min(max_delay, base * 2**i)`` times a jitter factor."""
    draw = jitter or (lambda: 1.0)
    return [min(max_delay, base_delay * 2**i) * draw() for i in range(max(0, attempts - 1))]


def with_retries(
    fn: Callable[[], T],
    attempts: int = 5,
    base_delay: float = 1.0,
    *,
    max_delay: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] | None = None,
) -> T:
    """Call ``fn``; retry retryable :class:`ProviderError` with exponential backoff.

    Non-retryable errors and every other exception propagate at once; after
    ``attempts`` tries the last retryable error propagates. ``jitter`` (default:
    uniform in [0.5, 1]) spreads retries of many dispatchers hitting one quota.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    draw = jitter if jitter is not None else (lambda: random.uniform(0.5, 1.0))
    delays = backoff_delays(attempts, base_delay, max_delay, jitter=draw)
    for attempt in range(attempts):
        try:
            return fn()
        except ProviderError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
            sleep(delays[attempt])
    raise AssertionError("unreachable")  # pragma: no cover
