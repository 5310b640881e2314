"""Trying a call again, for methods marked idempotent, across a restart.

A call to a method marked :func:`~.calls.idempotent` that fails because its
connection failed (the server was killed, is restarting, or the connection
dropped) is tried again with backoff until it succeeds, fails another way, or
its time is up; then the last failure is raised. A method that is not marked is
never tried again: its request may have reached the server, and running it
twice may not be safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["retrying"]

_R = TypeVar("_R")

_FIRST_DELAY_S = 0.005
_MAX_DELAY_S = 0.2


def retrying(
    attempt: Callable[[], _R],
    *,
    end_at: float,
    retryable: Callable[[BaseException], bool],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> _R:
    """``attempt()`` until it returns, raises what ``retryable`` refuses, or ``end_at``
    (a ``clock`` time) passes; backoff doubles from 5 ms up to 200 ms."""
    delay = _FIRST_DELAY_S
    while True:
        try:
            return attempt()
        except BaseException as exc:
            left = end_at - clock()
            if not retryable(exc) or left <= 0:
                raise
        sleep(min(delay, left))
        delay = min(delay * 2, _MAX_DELAY_S)
