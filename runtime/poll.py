"""Bounded waiting: try again with backoff until a deadline, never a fixed sleep.

Every wait of the client side goes through :func:`retry` (an attempt that
raises until it succeeds) or :func:`wait_until` (a condition that turns true).
``clock`` and ``sleep`` are injected, so unit tests run them without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from .health import backoff_delay

__all__ = ["retry", "wait_until"]

T = TypeVar("T")


def retry(
    attempt: Callable[[float], T],
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    initial: float = 0.01,
    maximum: float = 0.5,
    give_up: Callable[[], bool] | None = None,
) -> T:
    """``attempt(time left)`` until it returns, retrying on ``retry_on`` with backoff.

    When the deadline passes, or ``give_up()`` says there is no point (the server
    process died), the last ``retry_on`` error is raised. Other errors pass at once.
    """
    deadline = clock() + timeout_s
    tries = 0
    while True:
        try:
            return attempt(max(deadline - clock(), 0.0))
        except retry_on:
            remaining = deadline - clock()
            if remaining <= 0 or (give_up is not None and give_up()):
                raise
            tries += 1
            sleep(
                min(remaining, backoff_delay(tries, initial=initial, multiplier=2, maximum=maximum))
            )


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    initial: float = 0.01,
    maximum: float = 0.2,
) -> bool:
    """Poll ``condition`` with backoff: True once it holds, False if ``timeout_s`` passes."""
    deadline = clock() + timeout_s
    tries = 0
    while not condition():
        remaining = deadline - clock()
        if remaining <= 0:
            return False
        tries += 1
        sleep(min(remaining, backoff_delay(tries, initial=initial, multiplier=2, maximum=maximum)))
    return True
