"""Keeping one service's server alive, for its client: health checks that count and
act, restarts under the lifecycle lock, the health monitor, and notifications.

:class:`ServiceKeeper` joins the pure policy (:class:`~.supervise.Supervisor`) to
the client's :class:`~.lifecycle.Lifecycle` and :class:`~.backend.Backend`:

* the **owner** restarts its server when it dies (the backend reports it:
  :meth:`ServiceKeeper.server_died`) or fails ``max_consecutive_failures``
  health checks, with backoff and the flapping guard;
* any **other client** tells its backend, which may stop a hung server so that
  its owner restarts it.

A restart acts only on the server that was seen failing: if another has replaced
it meanwhile (the watcher and a health check both saw it die), it is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .backend import Backend, ServerRef
from .health import HealthPolicy, RestartPolicy
from .lifecycle import Lifecycle, ServiceState
from .notify import NotificationDispatcher, Notifier
from .supervise import HealthMonitor, Probe, RestartOutcome, Supervisor

__all__ = ["ServiceKeeper"]


class ServiceKeeper:
    """Health checks, restarts and notifications of one client's service."""

    def __init__(
        self,
        *,
        name: str,
        life: Lifecycle,
        backend: Backend,
        health: HealthPolicy,
        restart: RestartPolicy,
        notifiers: list[Notifier],
        log: logging.Logger,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.name = name
        self.life = life
        self.backend = backend
        self.log = log
        self.clock = clock
        self.dispatcher = NotificationDispatcher(notifiers, log)
        self.supervisor = Supervisor(
            name=name,
            health=health,
            restart=restart,
            probe=self._probe,
            on_unhealthy=self._on_unhealthy,
            notify=self.notify,
            log=log,
            clock=clock,
            sleep=sleep,
        )
        self._check_lock = threading.Lock()
        #: the server the last health check judged: a restart acts only on that one
        self._probed: ServerRef | None = None
        self._monitor: HealthMonitor | None = None

    def now_ms(self, current_time_ms: float | None = None) -> float:
        """The health checks' clock: the caller's ``current_time_ms``, else epoch ms, as
        the design doc's callers pass (``TimeUtil.now_in_millis()``); an injected clock
        (tests) replaces it."""
        if current_time_ms is not None:
            return float(current_time_ms)
        return (time.time() if self.clock is time.monotonic else self.clock()) * 1000.0

    # -- health checks --------------------------------------------------------------------

    def health_check(self, current_time_ms: float | None = None) -> bool:
        """One rate-limited check (see ``RPCServiceBase.health_check``). Never raises."""
        try:
            now_ms = self.now_ms(current_time_ms)
            with self._check_lock:
                tracker = self.supervisor.tracker
                if not tracker.due(now_ms):
                    return tracker.healthy
                return self.supervisor.check(now_ms)
        except Exception:
            self.log.exception("health check of %s failed unexpectedly", self.name)
            return False

    def _tick(self) -> None:
        try:
            with self._check_lock:
                self.supervisor.check(self.now_ms())
        except Exception:
            self.log.exception("health monitor of %s failed unexpectedly", self.name)

    def start_monitor(self, interval_s: float) -> None:
        if self._monitor is None or not self._monitor.is_alive():
            self._monitor = HealthMonitor(self._tick, interval_s, self.name)

    def stop_monitor(self, timeout_s: float) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.stop(timeout_s)

    @property
    def monitoring(self) -> bool:
        return self._monitor is not None and self._monitor.is_alive()

    def after_fork(self) -> None:
        self._monitor = None  # its thread is not in this process

    def _probe(self) -> Probe:
        probe = self.backend.probe()
        self._probed = probe.server
        return probe

    def _on_unhealthy(self, reason: str) -> bool:
        """At the threshold: the owner restarts; another client asks its backend."""
        if self.life.is_owner:
            return self.restart_server(reason, self._probed)
        return self.backend.on_unhealthy(reason)

    # -- restarts (owner) -------------------------------------------------------------------

    def restart_now(self, reason: str) -> bool:
        """A restart asked for by hand: it re-arms the flapping guard first."""
        with self.life.lock:
            self.supervisor.reset_flapping()
            return self.restart_server(reason)

    def restart_server(self, reason: str, failed: ServerRef | None = None) -> bool:
        """Restart (owner only). ``failed``: the server seen failing; if another has
        replaced it meanwhile, done. True if a server runs after it."""
        life = self.life
        if not life.is_owner:
            self.log.warning("%s: only the process that owns its server restarts it", self.name)
            return False
        with life.lock:
            if life.state in (ServiceState.STOPPED, ServiceState.DIRECT, ServiceState.NEW):
                return False
            if failed is not None and failed != self.backend.server:
                return life.state is ServiceState.RUNNING
            life.not_restarting.clear()
            life.state = ServiceState.RESTARTING
            try:
                outcome = self.supervisor.restart(reason, self.backend.restart_once)
            finally:
                life.not_restarting.set()
            ok = outcome is RestartOutcome.RESTARTED
            life.state = ServiceState.RUNNING if ok else ServiceState.FAILED
            return ok

    def server_died(self, reason: str, server: ServerRef) -> None:
        """The backend saw the owner's server die: count it, and restart at once."""
        tracker = self.supervisor.tracker
        tracker.record_failure(self.now_ms(), fatal=True)
        # Not a check: the next one, even mid-restart, waits for the new server and judges it.
        tracker.check_soon()
        if self.restart_server(reason, server):
            tracker.restarted()

    # -- notifications ----------------------------------------------------------------------

    def notify(self, message: str, level: str) -> None:
        self.dispatcher.notify(message, level)

    def flush(self, timeout_s: float) -> bool:
        return self.dispatcher.flush(timeout_s)
