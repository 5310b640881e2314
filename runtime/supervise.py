"""Supervision: health checks that act, restarts with backoff, and the threads that watch.

:class:`Supervisor` turns one probe result into counting, notifications and an
action, and runs restarts with backoff and the flapping guard. It does no I/O of
its own: it is handed a ``probe``, a ``restart_once`` (one stop-and-start
attempt), an ``on_unhealthy`` action, ``notify``, ``clock`` and ``sleep``, so
unit tests drive it with fakes, as :mod:`rpcgen.runtime.health` is driven
(:mod:`rpcgen.runtime.keeper` hands it a client's backend). :class:`ProcessWatcher`
and :class:`HealthMonitor` are the two threads: one waits on the server process,
one runs the checks on a timer.

Who acts on what:

* the **owner** (the process that started the server) restarts it: at once when
  the process dies (:func:`watch_process` waits on its sentinel, so no
  ``health_check()`` call is needed to notice), or when health checks fail
  ``max_consecutive_failures`` times;
* any **other process** whose ``health_check()`` finds the server hung that many
  times stops it (verified by pid, create time and title marker); its owner then
  sees the death and restarts it.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for_objects
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from .errors import CallTimeout, ServiceError, ServiceStopped, ServiceUnavailable
from .health import Action, FailureKind, FlapGuard, HealthPolicy, HealthTracker, RestartPolicy

__all__ = [
    "HealthMonitor",
    "Probe",
    "ProcessWatcher",
    "RestartOutcome",
    "Supervisor",
    "judge_health",
    "watch_process",
]


@dataclass(frozen=True)
class Probe:
    """One health check's result: ``kind`` None means healthy."""

    kind: FailureKind | None
    detail: str = ""
    #: the server process is gone: act now, without waiting for more failures
    fatal: bool = False
    #: (pid, generation) of the server this check judged: a restart acts on that one only
    server: tuple[int, int] | None = None


HEALTHY = Probe(None)


def judge_health(
    check: Callable[[], Any],
    *,
    server: tuple[int, int] | None = None,
    gone: Callable[[], str | None] | None = None,
) -> Probe:
    """Run ``check`` (a ``health_check_rpc`` call) and judge what it returned or raised.

    ``gone``: asked when the connection failed; a reason there means the server
    itself is gone (fatal: act at once).
    """
    try:
        result = check()
    except CallTimeout as exc:
        return Probe(FailureKind.TRANSPORT, exc.reason, server=server)
    except (ServiceUnavailable, ServiceStopped) as exc:
        reason = gone() if gone is not None else None
        if reason is not None:
            return Probe(FailureKind.TRANSPORT, reason, True, server=server)
        text = exc.reason if isinstance(exc, ServiceUnavailable) else str(exc)
        return Probe(FailureKind.TRANSPORT, text, server=server)
    except Exception as exc:
        return Probe(FailureKind.REMOTE, f"health_check_rpc raised {exc!r}", server=server)
    status = result.get("status") if isinstance(result, dict) else None
    if status != "ok":
        return Probe(FailureKind.STATUS, f"health_check_rpc returned {result!r}", server=server)
    return Probe(None, server=server)


class RestartOutcome(enum.Enum):
    RESTARTED = "restarted"
    GAVE_UP = "gave up"  # max_attempts failed
    FLAPPING = "flapping"  # too many restarts in the window: stopped restarting


class Supervisor:
    """Health-check bookkeeping and restart policy for one service."""

    def __init__(
        self,
        *,
        name: str,
        health: HealthPolicy,
        restart: RestartPolicy,
        probe: Callable[[], Probe],
        on_unhealthy: Callable[[str], bool],
        notify: Callable[[str, str], None],
        log: logging.Logger,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.name = name
        self.health = health
        self.restart_policy = restart
        self.tracker = HealthTracker(health)
        self.flap = FlapGuard(restart)
        self._probe = probe
        self._on_unhealthy = on_unhealthy
        self._notify = notify
        self._log = log
        self._clock = clock
        self._sleep = sleep
        self._flap_notified = False

    def check(self, now_ms: float) -> bool:
        """Run one check, count it, and act at the threshold. True if healthy."""
        tracker = self.tracker
        result = self._probe()
        if result.kind is None:
            if tracker.record_success(now_ms):
                self._log.info("%s recovered", self.name)
                self._notify(f"{self.name} recovered and is healthy again", "success")
            return True
        action = tracker.record_failure(now_ms, fatal=result.fatal)
        self._log.warning(
            "%s health check failed [%s] (%d/%d consecutive): %s",
            self.name,
            result.kind.value,
            tracker.consecutive_failures,
            self.health.max_consecutive_failures,
            result.detail,
        )
        if action is Action.RESTART:
            if self._on_unhealthy(f"{result.kind.value} failure: {result.detail}"):
                tracker.restarted()
        elif action is Action.ALERT_MANUAL:
            self._notify(
                f"{self.name} failed {tracker.consecutive_failures} health checks and "
                f"auto-restart is off: manual intervention needed ({result.detail})",
                "error",
            )
        return False

    def reset_flapping(self) -> None:
        self.flap.reset()
        self._flap_notified = False

    def restart(self, reason: str, restart_once: Callable[[], int | None]) -> RestartOutcome:
        """Restart with backoff: up to ``max_attempts`` of ``restart_once`` (which raises
        :class:`ServiceError` on failure and returns the new server pid)."""
        policy = self.restart_policy
        last_error: BaseException | None = None
        for attempt in range(1, policy.max_attempts + 1):
            now = self._clock()
            if not self.flap.allow(now):
                if not self._flap_notified:
                    self._flap_notified = True
                    self._notify(
                        f"{self.name} is flapping: {policy.flap_max_restarts} restarts within "
                        f"{policy.flap_window_s:g}s. Auto-restart stopped; fix the server and "
                        "call restart().",
                        "critical",
                    )
                return RestartOutcome.FLAPPING
            delay = self.flap.delay(now)
            if delay > 0:
                self._log.info("%s: waiting %.2fs before restart (backoff)", self.name, delay)
                self._sleep(delay)
            self.flap.record(self._clock())
            self._log.warning(
                "restarting %s (attempt %d/%d): %s", self.name, attempt, policy.max_attempts, reason
            )
            try:
                pid = restart_once()
            except ServiceError as exc:
                last_error = exc
                self._log.error("restart attempt %d of %s failed: %s", attempt, self.name, exc)
                continue
            self._notify(f"{self.name} server restarted (pid {pid}) after: {reason}", "warning")
            return RestartOutcome.RESTARTED
        self._notify(
            f"{self.name} could not be restarted after {policy.max_attempts} attempts: "
            f"{last_error}",
            "error",
        )
        return RestartOutcome.GAVE_UP


class Watched(Protocol):
    """What :class:`ProcessWatcher` watches (the process backend)."""

    def watch_target(self) -> tuple[BaseProcess, int] | None:
        """The server process and its sentinel; None while there is none to watch."""
        ...

    def process_exited(self, process: BaseProcess) -> None: ...


class ProcessWatcher:
    """Owner side: a daemon thread that reports the server process's death at once.

    It waits on the process sentinel and a pipe (to wake it on shutdown, and after
    a restart put a new process in place). It holds what it watches only weakly,
    so an abandoned client can be collected. A forked child's copy is inert.
    """

    def __init__(self, watched: Watched, name: str) -> None:
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=watch_process,
            args=(weakref.ref(watched), self._wake_r, self._stop),
            name=f"rpcgen-watch-{name}",
            daemon=True,
        )
        self._thread.start()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def stop(self, timeout_s: float) -> None:
        if self._pid == os.getpid():  # a forked copy has no thread to stop
            self._stop.set()
            self.wake()
            if self._thread is not threading.current_thread():
                self._thread.join(timeout_s)
        os.close(self._wake_w)
        os.close(self._wake_r)


def watch_process(ref: weakref.ReferenceType[Watched], wake: int, stop: threading.Event) -> None:
    """Owner thread: wait on the server process's sentinel; report its death at once.

    Holds only a weak reference between waits, so an abandoned client can be
    collected. ``wake`` (a pipe's read end) interrupts the wait: on shutdown, and
    after a restart has put a new process in place.
    """
    log = logging.getLogger("rpcgen")
    while not stop.is_set():
        watched = ref()
        if watched is None:
            return
        try:
            target = watched.watch_target()
        except Exception:  # never let the watcher die: look again on the next wake-up
            log.exception("process watcher: reading the target failed")
            target = None
        del watched
        waiting_on = [wake] if target is None else [wake, target[1]]
        try:
            ready = wait_for_objects(waiting_on)
        except (OSError, ValueError):  # the sentinel was closed by a restart meanwhile
            continue
        if stop.is_set():
            return
        if wake in ready or target is None:
            try:
                os.read(wake, 512)  # drain; then look at the (maybe new) process again
            except OSError:
                return
            continue
        watched = ref()
        if watched is None:
            return
        try:
            watched.process_exited(target[0])
        except Exception:
            log.exception("process watcher: acting on the exit of pid %s failed", target[0].pid)
        del watched


class HealthMonitor:
    """A daemon thread that runs ``tick()`` (one health check) every ``interval_s``.

    It holds ``tick``'s object only weakly between ticks, so an abandoned client
    can be collected (and the thread then ends).
    """

    def __init__(self, tick: Callable[[], None], interval_s: float, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_monitor_loop,
            args=(weakref.WeakMethod(tick), self._stop, max(interval_s, 0.01)),
            name=f"rpcgen-health-{name}",
            daemon=True,
        )
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)


def _monitor_loop(
    tick: weakref.WeakMethod[Callable[[], None]], stop: threading.Event, interval_s: float
) -> None:
    while not stop.wait(interval_s):
        bound = tick()
        if bound is None:
            return
        bound()
        del bound
