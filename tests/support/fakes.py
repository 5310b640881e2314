"""Fakes for unit tests that need no real waiting."""

from __future__ import annotations


class FakeClock:
    """A clock that moves only when its ``sleep`` is called; it records each sleep."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
