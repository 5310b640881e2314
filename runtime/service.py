"""RPCServiceBase: the client's public API and lifecycle; a backend runs the server.

The client picks one :class:`~rpcgen.runtime.backend.Backend` when it is made
(direct mode, its own process, or a Ray actor) and drives the lifecycle
(:mod:`rpcgen.runtime.lifecycle`) through it: start, health checks that count
and act (:mod:`rpcgen.runtime.supervise`), restarts, pickling, shutdown.

The process that started the server *owns* it: it restarts it and stops it. Any
other client (``attach()``-ed, unpickled, or a forked copy) is RUNNING too, but
its ``shutdown()`` closes only its own connections. The service's key stays the
same across restarts, so every client reconnects after one (see
:mod:`rpcgen.runtime.sharing` and :mod:`rpcgen.runtime.directory`).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
import weakref
from abc import ABCMeta, abstractmethod
from collections.abc import Awaitable, Callable
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from .aio import AsyncView
from .announce import ReadySignal
from .backend import Backend, ServerRef
from .constants import DEFAULT_HANDSHAKE_TIMEOUT_S, DEFAULT_MAX_CONCURRENT_CALLS
from .direct import DirectBackend
from .endpoint import Address, Endpoint
from .errors import (
    NotPicklableError,
    ServiceError,
    ServiceStopped,
    ServiceUnavailable,
    UnsafeBindError,
)
from .health import HealthPolicy, RestartPolicy
from .lifecycle import Lifecycle, ServiceState, weakly
from .notify import NotificationDispatcher, Notifier
from .process import launch
from .process_backend import ProcessBackend
from .serve import serve_rpc
from .settings import ProcessSettings, RayOptions, check_backend, is_loopback
from .sharing import locate
from .supervise import HealthMonitor, Probe, RestartOutcome, Supervisor

__all__ = ["RPCServiceBase", "ServiceState"]

ServerT = TypeVar("ServerT")
_R = TypeVar("_R")
_Service = TypeVar("_Service", bound="RPCServiceBase[Any]")

_LIVE_SERVICES: weakref.WeakSet[RPCServiceBase[Any]] = weakref.WeakSet()


@atexit.register
def _shutdown_services_at_exit() -> None:
    for service in list(_LIVE_SERVICES):
        service._shutdown_if_owner()


def _after_fork_in_child() -> None:
    # The copies of the parent's clients here are non-owners now: they follow their
    # servers, and must never stop them.
    for service in list(_LIVE_SERVICES):
        service._rpc_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

# Attributes rebuilt fresh, never pickled: locks, threads, the backend and its connections.
_TRANSIENT = (
    "_rpc_life",
    "_rpc_backend",
    "_rpc_health_lock",
    "_rpc_monitor",
    "_rpc_dispatcher_obj",
    "_rpc_supervisor_obj",
    "_rpc_log",
)


def _direct_server(cls: type[RPCServiceBase[Any]], service: str, port: int) -> Any:
    """The server object, made as in direct mode: what a Ray actor serves.

    Module level, so that Ray can send it to the actor's worker. The client class's
    own ``__init__`` is not run (its arguments are not known there), as with ``attach()``.
    """
    client = cls.__new__(cls)
    RPCServiceBase.__init__(client, service, port, running_unit_tests=True)
    return client._create_direct_server()


class RPCServiceBase(Generic[ServerT], metaclass=ABCMeta):
    """Base class for a client whose server object runs in its own process.

    Subclasses implement :meth:`_create_direct_server` and
    :meth:`_start_server_process`, then call :meth:`_initialize_service`. Client
    methods forward to ``self._server_proxy.<method>_rpc(...)``. A subclass that
    misses one of the two cannot be constructed (``TypeError``).

    The server object is called from several threads at once: BaseManager serves
    each client connection (one per client thread) in its own thread.

    Where the server runs is the backend's business (:meth:`_rpc_make_backend`,
    the one place that chooses it).
    """

    #: Generated clients set these, so that ``attach()`` needs no arguments.
    rpc_service_name: str | None = None
    rpc_default_port: int | None = None
    rpc_backend: str = "process"
    rpc_ray_address: str | None = None
    rpc_ray_options: RayOptions | None = None
    #: The server's methods (generated clients list them): with backend="ray" the
    #: actor gets one actor method each, so a call costs what a raw Ray call does.
    rpc_server_methods: tuple[str, ...] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            raise TypeError(
                f"{cls.__name__} cannot be constructed: it must implement "
                f"{' and '.join(f'{name}()' for name in missing)} (see RPCServiceBase)"
            )
        return super().__new__(cls)

    def __init__(
        self,
        service_name: str,
        port: int,
        running_unit_tests: bool = False,
        enable_health_check: bool = False,
        health_check_interval_s: float = 60,
        max_consecutive_failures: int = 3,
        enable_auto_restart: bool = True,
        slack_notifier: Notifier | None = None,
        *,
        host: str = "127.0.0.1",
        notifier: Notifier | None = None,
        start_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 2.0,
        health_check_timeout_s: float = 5.0,
        restart_policy: RestartPolicy | None = None,
        health_monitor: bool = False,
        start_method: str | None = None,
        direct_mode_pickle: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        transport: str = "tcp",
        socket_dir: str | os.PathLike[str] | None = None,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
        authkey_file: str | os.PathLike[str] | None = None,
        backend: str = "process",
        ray_address: str | None = None,
        ray_options: RayOptions | None = None,
    ) -> None:
        if not service_name or not service_name.replace("_", "a").replace(".", "a").isalnum():
            raise ValueError(f"service_name must be an identifier, got {service_name!r}")
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535 for service {service_name!r}, got {port}")
        if transport not in ("tcp", "unix"):
            raise ValueError(f"transport must be 'tcp' or 'unix', got {transport!r}")
        if transport == "tcp" and not is_loopback(host) and authkey_file is None:
            raise UnsafeBindError(service=service_name, host=host)
        check_backend(
            service_name,
            backend,
            ray_address=ray_address,
            ray_options=ray_options,
            process_only={
                "transport": transport != "tcp",
                "socket_dir": socket_dir is not None,
                "authkey_file": authkey_file is not None,
                "handshake_timeout_s": handshake_timeout_s != DEFAULT_HANDSHAKE_TIMEOUT_S,
                "max_concurrent_calls": max_concurrent_calls != DEFAULT_MAX_CONCURRENT_CALLS,
            },
        )
        #: "process" (the server in its own process) or "ray" (in a named Ray actor)
        self.backend = backend
        self.ray_address = ray_address
        self.ray_options = (ray_options or RayOptions()) if backend == "ray" else None
        self.service_name = service_name
        self.port = port
        self.host = host
        self.transport = transport
        self.socket_dir = os.fspath(socket_dir) if socket_dir is not None else None
        self.authkey_file = os.fspath(authkey_file) if authkey_file is not None else None
        self.running_unit_tests = running_unit_tests
        self.enable_health_check = enable_health_check
        self.health_check_interval_s = health_check_interval_s
        self.max_consecutive_failures = max_consecutive_failures
        self.enable_auto_restart = enable_auto_restart
        self.slack_notifier = slack_notifier
        self.notifier = notifier
        self.start_timeout_s = start_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self.max_concurrent_calls = max_concurrent_calls
        self.health_policy = HealthPolicy(
            interval_s=health_check_interval_s,
            max_consecutive_failures=max_consecutive_failures,
            auto_restart=enable_auto_restart,
            check_timeout_s=health_check_timeout_s,
        )
        self.restart_policy = restart_policy or RestartPolicy()
        self.direct_mode_pickle = direct_mode_pickle
        self._rpc_health_monitor = health_monitor
        self._rpc_start_method = start_method
        self._clock = clock
        self._sleep = sleep
        #: the server the last health check judged: a restart acts only on that one
        self._rpc_probed: ServerRef | None = None
        self._rpc_init_transient()

    def _rpc_init_transient(self) -> None:
        self._rpc_log = logging.getLogger(f"rpcgen.{self.service_name}")
        self._rpc_life = Lifecycle()
        self._rpc_health_lock = threading.Lock()
        self._rpc_monitor: HealthMonitor | None = None
        # Made on first use: many clients (attached ones above all) never need them.
        self._rpc_dispatcher_obj: NotificationDispatcher | None = None
        self._rpc_supervisor_obj: Supervisor | None = None
        self._rpc_backend: Backend = self._rpc_make_backend()

    def _rpc_make_backend(self) -> Backend:
        """The backend, chosen once: direct mode, a Ray actor, or a process of its own.

        The one place that looks at ``running_unit_tests`` and ``backend``; tests
        override it to drive the lifecycle with a fake backend.
        """
        if self.running_unit_tests:
            return DirectBackend(
                make_server=weakly(self._create_direct_server),
                pickling=self.direct_mode_pickle,
                log=self._rpc_log,
            )
        if self.ray_options is not None:
            from .ray_backend import RayBackend  # imports no ray until it is used

            return RayBackend(
                service=self.service_name,
                port=self.port,
                make_server=functools.partial(
                    _direct_server, type(self), self.service_name, self.port
                ),
                methods=tuple(self.rpc_server_methods),
                options=self.ray_options,
                address=self.ray_address,
                start_timeout_s=self.start_timeout_s,
                shutdown_timeout_s=self.shutdown_timeout_s,
                check_timeout_s=self.health_policy.check_timeout_s,
                notify=weakly(self._rpc_notify),
                log=self._rpc_log,
                clock=self._clock,
                sleep=self._sleep,
            )
        return ProcessBackend(
            self._rpc_process_settings(),
            life=self._rpc_life,
            start_process=weakly(self._start_server_process),
            log=self._rpc_log,
            clock=self._clock,
            sleep=self._sleep,
        )

    def _rpc_process_settings(self) -> ProcessSettings:
        return ProcessSettings(
            service=self.service_name,
            port=self.port,
            host=self.host,
            transport=self.transport,
            socket_dir=self.socket_dir,
            authkey_file=self.authkey_file,
            start_method=self._rpc_start_method,
            start_timeout_s=self.start_timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            shutdown_timeout_s=self.shutdown_timeout_s,
            check_timeout_s=self.health_policy.check_timeout_s,
        )

    @property
    def _rpc_dispatcher(self) -> NotificationDispatcher:
        if self._rpc_dispatcher_obj is None:
            notifiers = [n for n in (self.notifier, self.slack_notifier) if n is not None]
            self._rpc_dispatcher_obj = NotificationDispatcher(notifiers, self._rpc_log)
        return self._rpc_dispatcher_obj

    @property
    def _rpc_supervisor(self) -> Supervisor:
        if self._rpc_supervisor_obj is None:
            self._rpc_supervisor_obj = Supervisor(
                name=self.service_name,
                health=self.health_policy,
                restart=self.restart_policy,
                probe=lambda: self._rpc_probe(),
                on_unhealthy=lambda reason: self._rpc_on_unhealthy(reason),
                notify=self._rpc_notify,
                log=self._rpc_log,
                clock=self._clock,
                sleep=self._sleep,
            )
        return self._rpc_supervisor_obj

    # -- subclass hooks (the seed's API) --------------------------------------------

    @abstractmethod
    def _create_direct_server(self) -> ServerT:
        """Create the server object in-process, for direct mode (unit tests)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _create_direct_server()")

    @abstractmethod
    def _start_server_process(
        self, address: Address, authkey: bytes, server_ready: ReadySignal
    ) -> BaseProcess:
        """Start and return the server process; it must call serve_rpc / _serve_rpc."""
        raise NotImplementedError(f"{type(self).__name__} must implement _start_server_process()")

    def _serve_rpc(
        self, server: Any, address: Address, authkey: bytes, server_ready: ReadySignal
    ) -> None:
        """Serve ``server`` (call this inside the server process)."""
        serve_rpc(
            server,
            address,
            authkey,
            server_ready,
            service_name=self.service_name,
            owner_pid=self._rpc_life.owner_pid,
            handshake_timeout_s=self.handshake_timeout_s,
            max_concurrent_calls=self.max_concurrent_calls,
        )

    def _launch_server_process(self, target: Callable[..., Any], *args: Any) -> BaseProcess:
        """Start ``target(*args)`` as a daemon process with this service's start method.

        ``target`` should be a module-level function so that spawn and
        forkserver can pickle it.
        """
        return launch(
            target, args, start_method=self._rpc_start_method, name=f"rpcgen-{self.service_name}"
        )

    # -- public API -----------------------------------------------------------------

    @classmethod
    def attach(
        cls: type[_Service],
        *,
        port: int | None = None,
        service_name: str | None = None,
        host: str | None = None,
        authkey_file: str | os.PathLike[str] | None = None,
        timeout_s: float = 10.0,
        **options: Any,
    ) -> _Service:
        """A client of a running service that this process does not own.

        On this host the service is found in the service directory by ``port``
        and/or ``service_name`` (default: the class's ``rpc_service_name``); on
        another host give ``host``, ``port`` and ``authkey_file``. Raises
        :class:`~rpcgen.runtime.errors.ServiceNotFound` within ``timeout_s`` if
        none runs. Its ``shutdown()`` closes only its own connections. The class's
        ``__init__`` is not called, so any client class works, generated or not.
        """
        name = service_name or cls.rpc_service_name
        found = None
        if options.setdefault("backend", cls.rpc_backend) == "ray":  # found by name, in Ray
            if not name:
                raise ValueError(
                    f"{cls.__name__}.attach() of a Ray-backed service needs service_name="
                )
            options.setdefault("ray_address", cls.rpc_ray_address)
            options.setdefault("ray_options", cls.rpc_ray_options)
            port = cls.rpc_default_port or 1
        else:  # in this host's service directory, or at another host's address
            found = locate(  # by name on any port, unless a port is given (or there is no name)
                port=port if port is not None or name else cls.rpc_default_port,
                service=name,
                host=host,
                authkey_file=authkey_file,
                timeout_s=timeout_s,
            )
            name, port = found.service, found.port
            endpoint = Endpoint.of(found.address)
            if endpoint.path is not None:
                options.update(transport="unix", socket_dir=os.path.dirname(endpoint.path))
            else:
                options["host"] = endpoint.host
            options["authkey_file"] = authkey_file
        client: _Service = cls.__new__(cls)
        RPCServiceBase.__init__(client, name, port, **options)
        client._rpc_life.owner_pid = -1
        client._rpc_backend.attach(found, timeout_s)
        client._rpc_life.state = ServiceState.RUNNING
        client._rpc_log.info("%s attached at %s", name, client._rpc_backend.label)
        return client

    @property
    def state(self) -> ServiceState:
        return self._rpc_life.state

    @property
    def server_pid(self) -> int | None:
        """The running server's pid; None in direct mode or when stopped."""
        if self._rpc_life.state in (ServiceState.RUNNING, ServiceState.RESTARTING):
            return self._rpc_backend.server[0] or None
        return None

    @property
    def is_owner(self) -> bool:
        """True in the process that started the server (and restarts and stops it)."""
        return self._rpc_life.is_owner

    @property
    def address(self) -> Address:
        """(host, port) over TCP; with ``transport="unix"``, the socket's path."""
        return self.endpoint.address

    @property
    def endpoint(self) -> Endpoint:
        return self._rpc_process_settings().endpoint

    @property
    def _server_proxy(self) -> ServerT:
        proxy = self._rpc_backend.proxy
        if proxy is None:
            state = self._rpc_life.state
            if state is ServiceState.STOPPED:
                raise ServiceStopped(service=self.service_name)
            raise ServiceUnavailable(
                service=self.service_name,
                host=self.host,
                port=self.port,
                reason=f"the service is {state.value}; call _initialize_service() first",
            )
        return cast(ServerT, proxy)

    @property
    def _server_proxy_untyped(self) -> Any:
        """``_server_proxy`` typed as Any, for server methods that are not fully annotated.

        Generated code calls those through it: a local variable there could take the
        name of one of the method's parameters.
        """
        return self._server_proxy

    @property
    def aio(self) -> AsyncView[ServerT]:
        """The asyncio view: ``await client.aio.method(...)``, many calls in flight.

        Generated clients return a subclass with one typed coroutine per method.
        """
        return AsyncView(self)

    def _rpc_acall(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Awaitable[Any]:
        """Call server method ``method`` from a coroutine (what :attr:`aio` uses)."""
        self._server_proxy  # noqa: B018  (raises the typed error if there is no server)
        calls = self._rpc_backend.calls
        assert calls is not None, "a backend with a proxy has a call path"
        return calls._rpc_acall(method, args, kwargs, timeout_s)

    @staticmethod
    def _rpc_typed_as(method: Callable[..., _R], value: Any) -> _R:
        """``value`` typed as ``method``'s declared return type.

        Generated code returns an untyped server method's result through it, so the
        method body names nothing but ``self``: any other name (``str``, ``cast``,
        ``result``) could be one of the method's parameters.
        """
        return cast(_R, value)

    def _initialize_service(self) -> None:
        """Start the service: the server process and its client, or the direct server."""
        life = self._rpc_life
        with life.lock:
            if life.state is not ServiceState.NEW:
                return
            if self.running_unit_tests:
                self._rpc_backend.start()
                life.state = ServiceState.DIRECT
                self._rpc_log.debug("%s using a direct in-process server", self.service_name)
                return
            life.state = ServiceState.STARTING
            life.owner_pid = os.getpid()
            try:
                self._rpc_backend.start()
            except BaseException:
                life.state = ServiceState.FAILED
                self._rpc_backend.stop()
                raise
            life.state = ServiceState.RUNNING
            _LIVE_SERVICES.add(self)
        if self.enable_health_check and self.enable_auto_restart:
            self._rpc_backend.watch(weakly(self._rpc_server_died))
        if self._rpc_health_monitor and self.enable_health_check:
            self.start_health_monitor()

    def shutdown(self) -> None:
        """Stop the health monitor, close every connection; the owner also stops the server.

        Idempotent. A client that does not own its server closes only its connections.
        """
        self.stop_health_monitor()
        self._rpc_backend.unwatch(self.start_timeout_s + 5.0)
        life = self._rpc_life
        with life.lock:
            state = life.state
            life.state = ServiceState.STOPPED
            if state in (ServiceState.STOPPED, ServiceState.NEW):
                return
            self._rpc_backend.close()
            if life.is_owner:
                self._rpc_backend.stop()
            _LIVE_SERVICES.discard(self)
        if self._rpc_dispatcher_obj is not None:
            self._rpc_dispatcher_obj.flush(timeout_s=1.0)
        self._rpc_log.info("%s shut down", self.service_name)

    def restart(self) -> bool:
        """Restart the server now (and re-arm the flapping guard). True if it is back."""
        with self._rpc_life.lock:
            self._rpc_supervisor.reset_flapping()
            return self._rpc_restart_server("manual restart")

    def rotate_authkey(self) -> bool:
        """Owner: restart the server with a new key. Attached clients must attach again."""
        if not self.is_owner:
            raise ServiceError(f"only the owner of {self.service_name!r} can rotate its key")
        with self._rpc_life.lock:
            self._rpc_backend.rotate_key()
            return self._rpc_restart_server("authkey rotated")

    def health_check(self, current_time_ms: float | None = None) -> bool:
        """Check the server's health, at most once per ``health_check_interval_s``.

        Returns the last result while rate limited (never "healthy" while
        failing). Counts consecutive failures and, at ``max_consecutive_failures``,
        restarts the server (the owner), stops a hung server so that its owner
        restarts it (any other client), or, with auto-restart off, asks for manual
        intervention. Never raises.
        """
        try:
            if not self.enable_health_check:
                return True
            now_ms = self._rpc_now_ms(current_time_ms)
            with self._rpc_health_lock:
                tracker = self._rpc_supervisor.tracker
                if not tracker.due(now_ms):
                    return tracker.healthy
                return self._rpc_supervisor.check(now_ms)
        except Exception:
            self._rpc_log.exception("health check of %s failed unexpectedly", self.service_name)
            return False

    def start_health_monitor(self, interval_s: float | None = None) -> None:
        """Run health checks in a daemon thread every ``interval_s`` (default: the
        health-check interval) until :meth:`shutdown`."""
        if self._rpc_monitor is not None and self._rpc_monitor.is_alive():
            return
        interval = interval_s if interval_s is not None else self.health_check_interval_s
        self._rpc_monitor = HealthMonitor(self._monitor_tick, interval, self.service_name)

    def stop_health_monitor(self, timeout_s: float | None = None) -> None:
        monitor, self._rpc_monitor = self._rpc_monitor, None
        if monitor is not None:
            monitor.stop(timeout_s if timeout_s is not None else self.start_timeout_s + 5.0)

    def flush_notifications(self, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) until queued notifications were delivered."""
        return self._rpc_dispatcher.flush(timeout_s)

    # -- context manager, repr, pickling, finalization ---------------------------------

    def __enter__(self: _Service) -> _Service:
        self._initialize_service()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        mode = "direct" if self.running_unit_tests else "rpc"
        pid = f" pid={self.server_pid}" if self.server_pid else ""
        return (
            f"<{type(self).__name__} service={self.service_name!r} mode={mode} "
            f"state={self._rpc_life.state.value} address={self._rpc_backend.label}{pid}>"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self._rpc_life.state
        if state is ServiceState.DIRECT or self.running_unit_tests:
            raise NotPicklableError(service=self.service_name)
        if state is not ServiceState.RUNNING:
            raise ServiceUnavailable(
                service=self.service_name,
                host=self.host,
                port=self.port,
                reason="only a running client can be sent to another process "
                f"(it is {state.value})",
            )
        pickled = {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT}
        pickled["_rpc_health_monitor"] = False
        pickled["_rpc_handoff"] = self._rpc_backend.handoff()
        return pickled

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A client of the existing server, which it never owns; it follows restarts.
        handoff = state.pop("_rpc_handoff")
        self.__dict__.update(state)
        self._rpc_init_transient()
        self._rpc_life.owner_pid = -1
        self._rpc_backend.follow(handoff)
        self._rpc_life.state = ServiceState.RUNNING

    def _shutdown_if_owner(self) -> None:
        # A forked child inherits this object: it must never stop its parent's server.
        if self.is_owner:
            self.shutdown()
        else:
            self._rpc_backend.close()

    def __del__(self) -> None:
        try:
            life = getattr(self, "_rpc_life", None)
            if life is not None and life.state not in (ServiceState.NEW, ServiceState.STOPPED):
                self._shutdown_if_owner()
        except Exception:
            pass

    def _rpc_after_fork(self) -> None:
        """In a forked child: this copy no longer owns the server; it follows it."""
        self._rpc_backend.after_fork()
        self._rpc_monitor = None  # its thread is not in this process

    # -- internals: restarts and health ---------------------------------------------------

    def _rpc_restart_server(self, reason: str, failed: ServerRef | None = None) -> bool:
        """Restart (owner only). ``failed``: the server seen failing; if another has
        replaced it meanwhile (the watcher and a health check both saw it die), done."""
        if not self.is_owner:
            self._rpc_log.warning(
                "%s: only the process that owns its server restarts it", self.service_name
            )
            return False
        life = self._rpc_life
        with life.lock:
            if life.state in (ServiceState.STOPPED, ServiceState.DIRECT, ServiceState.NEW):
                return False
            if failed is not None and failed != self._rpc_backend.server:
                return life.state is ServiceState.RUNNING
            life.not_restarting.clear()
            life.state = ServiceState.RESTARTING
            try:
                outcome = self._rpc_supervisor.restart(reason, self._rpc_backend.restart_once)
            finally:
                life.not_restarting.set()
            ok = outcome is RestartOutcome.RESTARTED
            life.state = ServiceState.RUNNING if ok else ServiceState.FAILED
            return ok

    def _rpc_server_died(self, reason: str, server: ServerRef) -> None:
        """The backend saw the owner's server die: count it, and restart at once."""
        tracker = self._rpc_supervisor.tracker
        tracker.record_failure(self._rpc_now_ms(None), fatal=True)
        if self._rpc_restart_server(reason, server):
            tracker.restarted()

    def _rpc_now_ms(self, current_time_ms: float | None) -> float:
        return float(current_time_ms) if current_time_ms is not None else self._clock() * 1000.0

    def _monitor_tick(self) -> None:
        try:
            with self._rpc_health_lock:
                self._rpc_supervisor.check(self._rpc_now_ms(None))
        except Exception:
            self._rpc_log.exception("health monitor of %s failed unexpectedly", self.service_name)

    def _rpc_probe(self) -> Probe:
        """One health check."""
        probe = self._rpc_backend.probe()
        self._rpc_probed = probe.server
        return probe

    def _rpc_on_unhealthy(self, reason: str) -> bool:
        """At the threshold: the owner restarts; another client asks its backend."""
        if self.is_owner:
            return self._rpc_restart_server(reason, self._rpc_probed)
        return self._rpc_backend.on_unhealthy(reason)

    def _rpc_notify(self, message: str, level: str) -> None:
        self._rpc_dispatcher.notify(message, level)
