"""Health-check policy and bookkeeping, free of I/O so unit tests drive it with a fake clock.

* :class:`HealthPolicy` / :class:`RestartPolicy`: frozen configuration.
* :class:`HealthTracker`: rate limiting, consecutive-failure counting, recovery
  detection. It decides; the service acts.
* :class:`FlapGuard`: restart history in a sliding window, giving the backoff
  before the next restart and refusing restarts once the service flaps.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "Action",
    "FailureKind",
    "FlapGuard",
    "HealthPolicy",
    "HealthTracker",
    "RestartPolicy",
    "backoff_delay",
]


@dataclass(frozen=True)
class HealthPolicy:
    """When to check, and what counts as failing."""

    interval_s: float = 60.0
    max_consecutive_failures: int = 3
    auto_restart: bool = True
    #: A ``health_check_rpc`` with no reply within this is a failure (a hung server).
    check_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.interval_s < 0:
            raise ValueError(f"health_check_interval_s must be >= 0, got {self.interval_s}")
        if self.max_consecutive_failures < 1:
            raise ValueError(
                f"max_consecutive_failures must be >= 1, got {self.max_consecutive_failures}"
            )
        if self.check_timeout_s <= 0:
            raise ValueError(f"health_check_timeout_s must be > 0, got {self.check_timeout_s}")


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff between restart attempts, and the flapping guard."""

    backoff_initial_s: float = 0.5
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 30.0
    #: Start attempts per restart before giving up on this round.
    max_attempts: int = 3
    #: This many restarts within ``flap_window_s`` means the service is flapping:
    #: restarting stops and a notification is sent.
    flap_max_restarts: int = 5
    flap_window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.flap_max_restarts < 1:
            raise ValueError("max_attempts and flap_max_restarts must be >= 1")
        if self.backoff_initial_s < 0 or self.backoff_multiplier < 1 or self.flap_window_s <= 0:
            raise ValueError(
                "backoff_initial_s must be >= 0, backoff_multiplier >= 1, flap_window_s > 0"
            )


def backoff_delay(attempt: int, *, initial: float, multiplier: float, maximum: float) -> float:
    """Delay before retry number ``attempt`` (1-based): initial * multiplier**(attempt-1)."""
    if attempt <= 0:
        return 0.0
    return float(min(maximum, initial * multiplier ** (attempt - 1)))


class FailureKind(enum.Enum):
    TRANSPORT = "transport"  # unreachable, connection lost, timed out, process dead
    STATUS = "status"  # answered, but its status was not "ok"
    REMOTE = "remote"  # health_check_rpc itself raised


class Action(enum.Enum):
    NONE = "none"
    RESTART = "restart"
    ALERT_MANUAL = "alert_manual"  # auto-restart is off: a human must act


@dataclass
class HealthTracker:
    """Rate limiting and failure counting for one service. Times are in ms."""

    policy: HealthPolicy
    consecutive_failures: int = 0
    last_check_ms: float | None = None
    #: True from the first failure until a check succeeds again (survives restarts,
    #: so that recovery is reported once, after the restart proved itself).
    degraded: bool = False
    _alerted_manual: bool = field(default=False, repr=False)

    @property
    def healthy(self) -> bool:
        return not self.degraded

    def due(self, now_ms: float) -> bool:
        """Whether a check is due at ``now_ms``. A time before the last check is due too:
        the caller's clock is not the one the last check used (upstream code passes
        epoch ms, others a monotonic clock), or the wall clock was set back; waiting for
        it to catch up would skip every check meanwhile."""
        if self.last_check_ms is None or now_ms < self.last_check_ms:
            return True
        return now_ms - self.last_check_ms >= self.policy.interval_s * 1000.0

    def record_success(self, now_ms: float) -> bool:
        """Record a passing check; True if this is a recovery."""
        recovered = self.degraded
        self.last_check_ms = now_ms
        self.consecutive_failures = 0
        self.degraded = False
        self._alerted_manual = False
        return recovered

    def record_failure(self, now_ms: float, *, fatal: bool = False) -> Action:
        """Record a failing check and say what to do about it.

        ``fatal`` (the server process is gone) acts at once rather than waiting
        for ``max_consecutive_failures``: a dead process is not a transient blip.
        """
        self.last_check_ms = now_ms
        self.consecutive_failures += 1
        self.degraded = True
        if not fatal and self.consecutive_failures < self.policy.max_consecutive_failures:
            return Action.NONE
        if self.policy.auto_restart:
            return Action.RESTART
        if self._alerted_manual:
            return Action.NONE
        self._alerted_manual = True
        return Action.ALERT_MANUAL

    def restarted(self) -> None:
        """A restart went through: count failures afresh (still degraded until a pass),
        and judge the new server at the next check, however soon."""
        self.consecutive_failures = 0
        self.check_soon()

    def check_soon(self) -> None:
        """Make the next check due at once (a restart is judged by it, not by the rate)."""
        self.last_check_ms = None


@dataclass
class FlapGuard:
    """Restart history in a sliding window. Times are in seconds."""

    policy: RestartPolicy
    _times: deque[float] = field(default_factory=deque, repr=False)
    tripped: bool = False

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.policy.flap_window_s:
            self._times.popleft()

    def recent(self, now: float) -> int:
        self._trim(now)
        return len(self._times)

    def allow(self, now: float) -> bool:
        """False once ``flap_max_restarts`` restarts happened within the window."""
        if self.tripped:
            return False
        if self.recent(now) >= self.policy.flap_max_restarts:
            self.tripped = True
        return not self.tripped

    def delay(self, now: float) -> float:
        """Backoff before the next restart: none for the first in the window."""
        p = self.policy
        return backoff_delay(
            self.recent(now),
            initial=p.backoff_initial_s,
            multiplier=p.backoff_multiplier,
            maximum=p.backoff_max_s,
        )

    def record(self, now: float) -> None:
        self._trim(now)
        self._times.append(now)

    def reset(self) -> None:
        """Re-arm after a manual restart."""
        self._times.clear()
        self.tripped = False
