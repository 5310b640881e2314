"""The Ray backend: the server object inside a named Ray actor.

Imported only when a client has ``backend="ray"``. The parts, one job each:
:mod:`.ray_cluster` (connecting, listing), :mod:`.ray_actor` (what runs in the
actor), :mod:`.ray_proxy` (the client's calls), and here the owner's side
(:class:`RayHost`) and the :class:`~rpcgen.runtime.backend.Backend` a client
drives (:class:`RayBackend`)::

    owner ── RayHost.start() ──> ServiceActor(make_server) ── make_server()
      │                               ▲
      └── RayProxy.<method>_rpc() ────┘  (any client: owner, attached, unpickled)

Restarts: Ray restarts a dead actor (``max_restarts``, default -1: always); a
health check that finds a new worker pid says so. A *hung* actor (failing
``max_consecutive_failures`` health checks) its owner kills, and Ray restarts
it; an actor Ray has given up on, its owner creates anew.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .backend import ServerRef
from .errors import (
    ServiceAlreadyRunning,
    ServiceError,
    ServiceNotFound,
    ServiceUnavailable,
    StartupError,
    StartupTimeout,
)
from .poll import retry, wait_until
from .ray_actor import Raised, actor_class
from .ray_cluster import (
    actor_dead,
    actor_row,
    cluster_address,
    connect,
    find_job,
    import_ray,
    stop_at_exit,
    worker_runtime_env,
)
from .ray_proxy import RayProxy
from .settings import RayOptions, ServiceSettings
from .supervise import Probe, judge_health

__all__ = ["RayBackend", "RayHost"]

#: How long an actor whose owner looks alive may take to go (that owner just shut down).
_JUST_GONE_S = 2.0


class _NotReady(Exception):
    """The actor has not answered as started yet."""


class RayHost:
    """The owner's side of one service's actor: start, stop, restart, replace a stale one."""

    def __init__(
        self,
        *,
        service: str,
        port: int,
        make_server: Callable[[], Any],
        methods: tuple[str, ...],
        options: RayOptions,
        address: str | None,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        streams: tuple[str, ...] = (),
        idempotent: frozenset[str] = frozenset(),
    ) -> None:
        self.service = service
        self.port = port
        self.make_server = make_server
        self.options = options
        self.address = address
        self.log = log
        self.clock = clock
        self.sleep = sleep
        self.owner_pid = os.getpid()
        #: the actor this host created: the only one it ever kills (another program's
        #: actor of the same name is not ours, even after a failed start of ours)
        self.actor: Any = None
        self.methods = methods
        self.proxy = RayProxy(
            service=self.service,
            namespace=options.namespace,
            address=address,
            methods=self.methods,
            streams=streams,
            idempotent=idempotent,
        )
        stop_at_exit(self)

    @property
    def where(self) -> str:
        return f"Ray actor {self.options.namespace}/{self.service}"

    def _lookup(self, ray: Any) -> Any:
        try:
            return ray.get_actor(self.service, namespace=self.options.namespace)
        except ValueError:
            return None

    def _wait_until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        return wait_until(condition, timeout_s=timeout_s, clock=self.clock, sleep=self.sleep)

    def _clear_stale(self, ray: Any, timeout_s: float) -> None:
        """Make way for our actor, or raise :class:`ServiceAlreadyRunning`.

        A detached actor whose owner's Ray job has ended is replaced. A non-detached
        one dies with its owner's job; if that job has ended, Ray removes it soon, so
        wait for that. Anything else (a live owner, or one that cannot be told) is
        left alone.
        """
        handle = self._lookup(ray)
        if handle is None:
            return
        row = actor_row(handle) or {}
        job_id = str(row.get("JobID", ""))
        job = find_job(job_id) if job_id else None
        owner_gone = job is not None and bool(job.get("IsDead"))
        owner = (
            f"pid {job.get('DriverPid')} on {job.get('DriverIPAddress')} (Ray job {job_id})"
            if job
            else "an unknown program"
        )
        if not owner_gone:
            # An owner that has just shut down (its actor killed, its job not yet marked
            # ended) looks alive for a moment: give it that moment before saying it runs.
            if self._wait_until(lambda: self._lookup(ray) is None, min(_JUST_GONE_S, timeout_s)):
                return
            raise ServiceAlreadyRunning(service=self.service, where=self.where, owner=owner)
        if row.get("IsDetached"):
            self.log.warning(
                "%s: replacing stale detached %s; its owner (%s) is gone",
                self.service,
                self.where,
                owner,
            )
            ray.kill(handle, no_restart=True)
        if not self._wait_until(lambda: self._lookup(ray) is None, timeout_s):
            raise ServiceAlreadyRunning(service=self.service, where=self.where, owner=owner)

    def start(self, timeout_s: float, stale_timeout_s: float) -> int:
        """Create the actor; its pid once ``health_check_rpc`` answers within ``timeout_s``."""
        ray = connect(self.service, self.address)
        self._clear_stale(ray, stale_timeout_s)
        owner = {"pid": os.getpid(), "host": socket.gethostname()}
        options = self.options.actor_options()
        options.update(name=self.service, runtime_env=worker_runtime_env())
        try:
            handle = (
                actor_class(ray, self.service, self.methods)
                .options(**options)
                .remote(self.make_server, owner)
            )
        except ValueError as exc:  # the name was taken meanwhile
            raise ServiceAlreadyRunning(
                service=self.service, where=self.where, owner=f"another program ({exc})"
            ) from None
        self.actor = self.proxy._rpc_handle = handle
        self.proxy._rpc_closed = False
        try:
            return self.wait_ready(timeout_s, handle)
        except BaseException:
            self.stop(stale_timeout_s)
            raise

    def wait_ready(self, timeout_s: float, handle: Any, not_pid: int | None = None) -> int:
        """The actor's pid once it answers a health check (from a worker other than
        ``not_pid``); StartupError if it died, StartupTimeout after ``timeout_s``."""
        ray = connect(self.service, self.address)
        where = f"{self.where} of service {self.service!r}"

        def answered(remaining: float) -> int:
            try:
                pid, value = ray.get(handle.rpcgen_health.remote(), timeout=remaining)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
                raise _NotReady from None  # still starting, or restarting: ask again
            except ray.exceptions.RayActorError as exc:
                raise StartupError(
                    service=self.service, port=self.port, detail=_startup_detail(exc), where=where
                ) from None
            if type(value) is Raised:
                raise StartupError(
                    service=self.service,
                    port=self.port,
                    detail=f"health_check_rpc raised {value.info[2]}: {value.info[3]}",
                    where=where,
                )
            if not_pid is not None and pid == not_pid:
                raise _NotReady  # the old worker still answers
            return int(pid)

        try:
            return retry(
                answered,
                retry_on=_NotReady,
                timeout_s=timeout_s,
                clock=self.clock,
                sleep=self.sleep,
                initial=0.05,
                maximum=0.05,
            )
        except _NotReady:
            raise StartupTimeout(
                service=self.service,
                port=self.port,
                timeout_s=timeout_s,
                where=where,
                detail=self._pending_hint(handle),
            ) from None

    def _pending_hint(self, handle: Any) -> str:
        row = actor_row(handle) or {}
        state = row.get("State", "unknown")
        if state in ("PENDING_CREATION", "DEPENDENCIES_UNREADY"):
            wanted = {
                key: value
                for key, value in self.options.actor_options().items()
                if key in ("num_cpus", "num_gpus", "resources")
            }
            return (
                f"Ray has not placed it (state {state}): does a node of the cluster have "
                f"what it asks for ({wanted or 'default resources'})?"
            )
        return f"its state is {state}; raise start_timeout_s if its setup is slow"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Kill our actor (no restart) and wait, bounded, until Ray has it dead."""
        handle, self.actor, self.proxy._rpc_handle = self.actor, None, None
        if handle is None:
            return
        ray = import_ray(self.service)
        if not ray.is_initialized():
            return  # Ray is gone, and our actor with it
        ray.kill(handle, no_restart=True)
        if not self._wait_until(lambda: actor_dead(handle), timeout_s):
            self.log.warning("%s: %s not dead yet after kill", self.service, self.where)

    def restart(self, timeout_s: float, old_pid: int | None) -> int:
        """Kill our actor so that Ray restarts it; if Ray has given up on it, make a new one."""
        handle = self.actor
        row = actor_row(handle) if handle is not None else None
        if handle is not None and row is not None and row.get("State") != "DEAD":
            connect(self.service, self.address).kill(handle, no_restart=False)
            try:
                return self.wait_ready(timeout_s, handle, not_pid=old_pid)
            except StartupError:  # out of restarts: Ray marked it dead
                pass
        self.log.warning("%s: Ray gave up on %s; creating it anew", self.service, self.where)
        self.stop(timeout_s)
        return self.start(timeout_s, timeout_s)


def _startup_detail(exc: BaseException) -> str:
    text = str(exc)
    # Ray's text of a constructor failure ends with the server's exception line.
    lines = [line for line in text.splitlines() if line.strip()]
    tail = lines[-1].strip() if lines else type(exc).__name__
    return f"the actor died before it was ready: {tail}"


class RayBackend:
    """The :class:`~rpcgen.runtime.backend.Backend` of a Ray-backed service."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        make_server: Callable[[], Any],
        notify: Callable[[str, str], None],
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.service = settings.service
        self.port = settings.port
        self.make_server = make_server
        self.methods = settings.server_methods
        self.streams = settings.stream_methods
        self.idempotent = settings.idempotent
        self.options = settings.ray_options or RayOptions()
        self.address = settings.ray_address
        self.start_timeout_s = settings.start_timeout_s
        self.shutdown_timeout_s = settings.shutdown_timeout_s
        self.check_timeout_s = settings.check_timeout_s
        self.notify = notify
        self.log = log
        self.clock = clock
        self.sleep = sleep
        self.host: RayHost | None = None
        self.proxy: RayProxy | None = None
        self.calls: RayProxy | None = None
        self.server: ServerRef = (0, 0)
        #: the cluster's address, so that a copy unpickled elsewhere joins the same Ray
        self.cluster: str | None = self.address

    @property
    def label(self) -> str:
        return f"ray:{self.options.namespace}/{self.service}"

    def _new_proxy(self, address: str | None) -> RayProxy:
        return RayProxy(
            service=self.service,
            namespace=self.options.namespace,
            address=address,
            methods=self.methods,
            streams=self.streams,
            idempotent=self.idempotent,
        )

    def _use(self, proxy: RayProxy) -> None:
        self.proxy = self.calls = proxy

    def start(self) -> int:
        host = self.host
        if host is None:
            host = self.host = RayHost(
                service=self.service,
                port=self.port,
                make_server=self.make_server,
                methods=self.methods,
                options=self.options,
                address=self.address,
                log=self.log,
                clock=self.clock,
                sleep=self.sleep,
                streams=self.streams,
                idempotent=self.idempotent,
            )
        pid = host.start(self.start_timeout_s, self.shutdown_timeout_s)
        self._started(host, pid)
        return pid

    def _started(self, host: RayHost, pid: int) -> None:
        self._use(host.proxy)
        self.cluster = host.proxy._rpc_cluster_address()
        self.server = (pid, self.server[1] + 1)
        self.log.info("%s actor started (worker pid %s) as %s", self.service, pid, self.label)

    def stop(self) -> None:
        if self.host is not None:
            self.host.stop(self.shutdown_timeout_s)

    def restart_once(self) -> int:
        """Kill the actor so that Ray restarts it (or make it anew if Ray gave up)."""
        if self.host is None:
            return self.start()
        pid = self.host.restart(self.start_timeout_s, self.server[0] or None)
        self._started(self.host, pid)
        return pid

    def probe(self) -> Probe:
        """One health check; notes a restart that Ray made (a new worker pid)."""
        proxy = self.proxy
        judged = self.server
        if proxy is None:
            return judge_health(_not_started(self.service), server=judged)

        def check() -> Any:
            nonlocal judged
            pid, result = proxy._rpc_health(
                self.check_timeout_s, self.start_timeout_s, self.clock, self.sleep
            )
            old = self.server[0]
            if pid != old:
                self.server = judged = (pid, self.server[1] + 1)
                if old:
                    self.notify(
                        f"{self.service}: Ray restarted its actor after it died "
                        f"(worker pid {old} -> {pid})",
                        "warning",
                    )
            return result

        return dataclasses.replace(judge_health(check), server=judged)

    def watch(self, on_exit: Callable[[str, ServerRef], None]) -> None:
        pass  # Ray restarts a dead actor itself

    def unwatch(self, timeout_s: float) -> None:
        pass

    def handoff(self) -> tuple[str | None, ServerRef]:
        return self.cluster, self.server

    def follow(self, handoff: tuple[str | None, ServerRef]) -> None:
        self.cluster, self.server = handoff
        proxy = self._new_proxy(self.cluster)
        self._use(proxy)
        if threading.current_thread() is threading.main_thread():
            # Join Ray now, from the main thread: a server process that was handed this
            # client would join from a call's thread, where Ray warns that it cannot set
            # its SIGTERM handler. A failure is raised again by the first call.
            with contextlib.suppress(Exception):
                proxy._rpc_actor()

    def attach(self, located: Any, timeout_s: float) -> None:
        """Follow the running actor, waiting up to ``timeout_s`` for it to answer."""
        ray = sys.modules.get("ray")
        connected = ray is not None and ray.is_initialized()
        if not connected and cluster_address(self.address) is None:
            # Connecting would start a Ray private to this program, where no owner's actor
            # can be: say so at once, not after a search of the wrong cluster.
            raise ServiceNotFound(
                service=self.service,
                port=None,
                timeout_s=timeout_s,
                why=f"no Ray cluster to look in for {self.service!r}: an owner's own local Ray "
                "is private to it. Start a cluster with `ray start --head`, and give both "
                "programs its address (RAY_ADDRESS, or ray_address=)",
            )
        proxy = self._new_proxy(self.address)
        try:
            pid = retry(
                lambda remaining: proxy._rpc_worker_pid(max(remaining, 0.1)),
                retry_on=ServiceUnavailable,
                timeout_s=timeout_s,
                clock=self.clock,
                sleep=self.sleep,
            )
        except ServiceUnavailable:
            raise ServiceNotFound(service=self.service, port=None, timeout_s=timeout_s) from None
        self.follow((proxy._rpc_cluster_address(), (pid, 1)))

    def on_unhealthy(self, reason: str) -> bool:
        self.log.warning("%s is unhealthy (its owner restarts it): %s", self.service, reason)
        return False

    def rotate_key(self) -> None:
        raise ServiceError(
            f"{self.service!r} runs on Ray (backend='ray'), which has no rpcgen key; "
            "Ray's own token authenticates its cluster"
        )

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy._rpc_close()

    def after_fork(self) -> None:
        pass  # a RayProxy holds no connection of its own


def _not_started(service: str) -> Callable[[], Any]:
    def check() -> Any:
        raise ServiceUnavailable(service=service, host="ray", port="-", reason="not started")

    return check
