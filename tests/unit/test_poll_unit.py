"""The bounded poll helper, driven by a fake clock: backoff, deadline, giving up early."""

from __future__ import annotations

import pytest

from rpcgen.runtime.poll import retry, wait_until
from tests.support.fakes import FakeClock


def test_retry_backs_off_until_the_attempt_succeeds() -> None:
    clock = FakeClock(0.0)
    seen: list[float] = []

    def attempt(remaining: float) -> str:
        seen.append(remaining)
        if len(seen) < 4:
            raise ConnectionError("not yet")
        return "up"

    result = retry(attempt, retry_on=ConnectionError, timeout_s=10, clock=clock, sleep=clock.sleep)
    assert result == "up"
    assert clock.sleeps == [0.01, 0.02, 0.04]
    assert seen == [10.0, 9.99, pytest.approx(9.97), pytest.approx(9.93)]


def test_retry_raises_the_last_error_at_the_deadline_without_oversleeping() -> None:
    clock = FakeClock(0.0)

    def attempt(remaining: float) -> None:
        raise ConnectionError(f"refused with {remaining:.2f}s left")

    with pytest.raises(ConnectionError, match=r"0\.00s left"):
        retry(attempt, retry_on=ConnectionError, timeout_s=1.0, clock=clock, sleep=clock.sleep)
    assert sum(clock.sleeps) == pytest.approx(1.0)  # the last sleep is cut to the deadline
    assert max(clock.sleeps) <= 0.5


def test_retry_gives_up_early_and_passes_other_errors_at_once() -> None:
    clock = FakeClock(0.0)
    tries: list[int] = []

    def refused(_: float) -> None:
        tries.append(1)
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        retry(
            refused,
            retry_on=ConnectionError,
            timeout_s=10,
            clock=clock,
            sleep=clock.sleep,
            give_up=lambda: len(tries) >= 2,
        )
    assert len(tries) == 2

    def broken(_: float) -> None:
        raise KeyError("a bug, not a wait")

    with pytest.raises(KeyError):
        retry(broken, retry_on=ConnectionError, timeout_s=10, clock=clock, sleep=clock.sleep)


def test_wait_until_polls_with_backoff_and_reports_the_deadline() -> None:
    clock = FakeClock(0.0)
    assert wait_until(lambda: clock.now >= 0.05, timeout_s=1, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [0.01, 0.02, 0.04]
    clock = FakeClock(0.0)
    assert not wait_until(lambda: False, timeout_s=1, clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(1.0) and max(clock.sleeps) == 0.2
