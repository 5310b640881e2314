"""Health bookkeeping, backoff and flapping with a fake clock: no processes, no waiting."""

from __future__ import annotations

import pytest

from rpcgen.runtime.health import (
    Action,
    FlapGuard,
    HealthPolicy,
    HealthTracker,
    RestartPolicy,
    backoff_delay,
)


def test_rate_limit_is_per_interval() -> None:
    t = HealthTracker(HealthPolicy(interval_s=60))
    assert t.due(0)
    t.record_success(0)
    assert not t.due(59_999)
    assert t.due(60_000)


def test_failures_count_to_threshold_then_restart() -> None:
    t = HealthTracker(HealthPolicy(max_consecutive_failures=3))
    assert [t.record_failure(i) for i in range(3)] == [Action.NONE, Action.NONE, Action.RESTART]
    assert t.consecutive_failures == 3 and not t.healthy


def test_fatal_failure_acts_at_once() -> None:
    t = HealthTracker(HealthPolicy(max_consecutive_failures=3))
    assert t.record_failure(0, fatal=True) is Action.RESTART


def test_success_resets_and_reports_recovery_once() -> None:
    t = HealthTracker(HealthPolicy(max_consecutive_failures=2))
    t.record_failure(0)
    assert t.record_success(1) is True
    assert t.record_success(2) is False
    assert t.consecutive_failures == 0 and t.healthy


def test_restart_keeps_degraded_until_a_pass() -> None:
    t = HealthTracker(HealthPolicy(max_consecutive_failures=1))
    assert t.record_failure(0) is Action.RESTART
    t.restarted()
    assert t.consecutive_failures == 0 and not t.healthy
    assert t.record_success(1) is True


def test_manual_alert_once_per_failing_episode_when_auto_restart_is_off() -> None:
    t = HealthTracker(HealthPolicy(max_consecutive_failures=2, auto_restart=False))
    actions = [t.record_failure(i) for i in range(5)]
    assert actions == [Action.NONE, Action.ALERT_MANUAL, Action.NONE, Action.NONE, Action.NONE]
    t.record_success(10)
    assert [t.record_failure(i) for i in (11, 12)] == [Action.NONE, Action.ALERT_MANUAL]


def test_backoff_is_exponential_and_capped() -> None:
    delays = [backoff_delay(n, initial=0.5, multiplier=2, maximum=3) for n in range(6)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_flap_guard_delays_then_trips_within_the_window() -> None:
    g = FlapGuard(RestartPolicy(backoff_initial_s=1, flap_max_restarts=3, flap_window_s=100))
    seen = []
    now = 0.0
    while g.allow(now):
        seen.append(g.delay(now))
        g.record(now)
        now += 1
    assert seen == [0.0, 1.0, 2.0]
    assert g.tripped and not g.allow(1000)  # stays tripped until reset
    g.reset()
    assert g.allow(1000)


def test_flap_guard_forgets_restarts_outside_the_window() -> None:
    g = FlapGuard(RestartPolicy(flap_max_restarts=2, flap_window_s=10))
    g.record(0)
    g.record(5)
    assert g.recent(16) == 0
    assert g.allow(16)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_consecutive_failures": 0}, {"interval_s": -1}, {"check_timeout_s": 0}],
)
def test_health_policy_rejects_bad_numbers(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HealthPolicy(**kwargs)  # type: ignore[arg-type]


def test_restart_policy_rejects_bad_numbers() -> None:
    with pytest.raises(ValueError):
        RestartPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RestartPolicy(backoff_multiplier=0.5)
