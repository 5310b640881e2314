"""RPCServiceBase: a client for a server object in its own process, and maybe its owner.

With ``backend="ray"`` the server object lives in a named Ray actor instead
(:mod:`rpcgen.runtime.ray_backend`, imported only then); the states, ownership,
health checks and pickling below are the same, with Ray restarting a dead actor.

Lifecycle (``ServiceState``)::

    NEW ──_initialize_service()──> STARTING ──> RUNNING ──shutdown()──> STOPPED
     │                                            │  ▲
     │ running_unit_tests=True                    ▼  │ (restart went through)
     └──────────────> DIRECT                   RESTARTING ──(gave up)──> FAILED

The process that started the server *owns* it: it restarts it and stops it. Any
other client (``attach()``-ed, unpickled, or a forked copy) is RUNNING too, but
its ``shutdown()`` closes only its own connections. The service's key stays the
same across restarts, so every client reconnects after one (see
:mod:`rpcgen.runtime.sharing` and :mod:`rpcgen.runtime.directory`).
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import functools
import logging
import multiprocessing
import os
import secrets
import threading
import time
import weakref
from abc import ABCMeta, abstractmethod
from collections.abc import Awaitable, Callable
from multiprocessing import process as mp_process
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from . import directory
from .aio import AsyncView
from .backend import RayOptions, check_backend
from .direct import PicklingProxy
from .endpoint import Address, Endpoint
from .errors import (
    CallTimeout,
    NotPicklableError,
    ServiceAuthenticationError,
    ServiceError,
    ServiceNotFound,
    ServiceStopped,
    ServiceUnavailable,
    UnsafeBindError,
)
from .health import FailureKind, HealthPolicy, RestartPolicy, backoff_delay
from .notify import NotificationDispatcher, Notifier
from .process import cleanup_stale, stop_process, wait_address_free, wait_until_ready
from .serve import (
    DEFAULT_HANDSHAKE_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENT_CALLS,
    ReadySignal,
    serve_rpc,
)
from .sharing import is_loopback, locate, stop_hung_server, wait_until_published
from .supervise import HEALTHY, Probe, ProcessWatcher, RestartOutcome, Supervisor
from .transport import RPCProxy, request_shutdown, unix_socket_path

if TYPE_CHECKING:  # imported when a client uses backend="ray", never before
    from .ray_backend import RayHost, RayProxy

__all__ = ["RPCServiceBase", "ServiceState"]

ServerT = TypeVar("ServerT")
_R = TypeVar("_R")
_Service = TypeVar("_Service", bound="RPCServiceBase[Any]")


class ServiceState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    DIRECT = "direct"
    FAILED = "failed"
    STOPPED = "stopped"


class _Secret:
    """Holds the authkey so that no repr, log line or vars() dump shows it."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"


_LIVE_SERVICES: weakref.WeakSet[RPCServiceBase[Any]] = weakref.WeakSet()

# One server process started at a time in this process (registries start services from
# several threads). Where filelock >= 4.3 is loaded (`import ray` loads it), its audit hook
# makes a fork raise RuntimeError on Python 3.12+ while another thread is forking.
_START_LOCK = threading.Lock()


@atexit.register
def _shutdown_services_at_exit() -> None:
    for service in list(_LIVE_SERVICES):
        service._shutdown_if_owner()


def _after_fork_in_child() -> None:
    # os.fork() copies multiprocessing's set of children; if this child later exits
    # normally, multiprocessing's atexit terminates every daemonic "child" in it,
    # i.e. the parent's servers. They are not ours to stop. And the copies of the
    # parent's clients here are non-owners now: they follow restarts like one.
    for service in list(_LIVE_SERVICES):
        process = service._rpc_process
        if process is not None:
            mp_process._children.discard(process)  # type: ignore[attr-defined]
        service._rpc_become_follower()


os.register_at_fork(after_in_child=_after_fork_in_child)


async def _call_in_thread(call: Callable[[], _R]) -> _R:
    # Direct mode's aio: a worker thread, so tests see calls overlap as over RPC.
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, call)


def _monitor_loop(
    ref: weakref.ReferenceType[RPCServiceBase[Any]], stop: threading.Event, interval_s: float
) -> None:
    # Holds only a weak reference between ticks, so an abandoned client can be collected.
    while not stop.wait(interval_s):
        service = ref()
        if service is None:
            return
        service._monitor_tick()
        del service


# Attributes rebuilt fresh, never pickled: locks, threads, processes, connections.
_TRANSIENT = (
    "_rpc_lifecycle_lock",
    "_rpc_health_lock",
    "_rpc_not_restarting",
    "_rpc_process",
    "_rpc_proxy",
    "_rpc_ray",
    "_rpc_ray_proxy",
    "_rpc_direct",
    "_rpc_monitor",
    "_rpc_monitor_stop",
    "_rpc_watcher",
    "_rpc_dispatcher_obj",
    "_rpc_supervisor_obj",
    "_rpc_log",
)


class RPCServiceBase(Generic[ServerT], metaclass=ABCMeta):
    """Base class for a client whose server object runs in its own process.

    Subclasses implement :meth:`_create_direct_server` and
    :meth:`_start_server_process`, then call :meth:`_initialize_service`. Client
    methods forward to ``self._server_proxy.<method>_rpc(...)``. A subclass that
    misses one of the two cannot be constructed (``TypeError``).

    The server object is called from several threads at once: BaseManager serves
    each client connection (one per client thread) in its own thread.
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
        #: backend="ray": the Ray cluster's address, for clients unpickled elsewhere
        self._rpc_ray_cluster: str | None = ray_address
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
        self._rpc_state = ServiceState.NEW
        self._rpc_owner_pid: int | None = None
        self._rpc_server_pid: int | None = None
        self._rpc_authkey: _Secret | None = None
        #: (server pid, start generation) of the server this client last reached
        self._rpc_seen: tuple[int, int] = (0, 0)
        #: ``_rpc_seen`` when the last health probe ran: a restart acts only on that server
        self._rpc_probed: tuple[int, int] | None = None
        self._rpc_init_transient()

    def _rpc_init_transient(self) -> None:
        self._rpc_log = logging.getLogger(f"rpcgen.{self.service_name}")
        self._rpc_lifecycle_lock = threading.RLock()
        self._rpc_health_lock = threading.Lock()
        self._rpc_not_restarting = threading.Event()
        self._rpc_not_restarting.set()
        self._rpc_process: BaseProcess | None = None
        self._rpc_proxy: RPCProxy | None = None
        self._rpc_ray: RayHost | None = None
        self._rpc_ray_proxy: RayProxy | None = None
        self._rpc_direct: Any = None
        self._rpc_monitor: threading.Thread | None = None
        self._rpc_monitor_stop: threading.Event | None = None
        self._rpc_watcher: ProcessWatcher | None = None
        # Made on first use: many clients (attached ones above all) never need them.
        self._rpc_dispatcher_obj: NotificationDispatcher | None = None
        self._rpc_supervisor_obj: Supervisor | None = None

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
            owner_pid=self._rpc_owner_pid,
            handshake_timeout_s=self.handshake_timeout_s,
            max_concurrent_calls=self.max_concurrent_calls,
        )

    def _launch_server_process(self, target: Callable[..., Any], *args: Any) -> BaseProcess:
        """Start ``target(*args)`` as a daemon process with this service's start method.

        ``target`` should be a module-level function so that spawn and
        forkserver can pickle it.
        """
        ctx: Any = multiprocessing.get_context(self._rpc_start_method)
        process: BaseProcess = ctx.Process(
            target=target, args=args, daemon=True, name=f"rpcgen-{self.service_name}"
        )
        with _START_LOCK:
            process.start()
        return process

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
        if options.get("backend", cls.rpc_backend) == "ray":
            return cls._rpc_attach_actor(name, timeout_s, options)
        found = locate(  # by name on any port, unless a port is given (or there is no name)
            port=port if port is not None or name else cls.rpc_default_port,
            service=name,
            host=host,
            authkey_file=authkey_file,
            timeout_s=timeout_s,
        )
        client: _Service = cls.__new__(cls)
        endpoint = Endpoint.of(found.address)
        if endpoint.path is not None:
            options.update(transport="unix", socket_dir=os.path.dirname(endpoint.path))
        else:
            options["host"] = endpoint.host
        RPCServiceBase.__init__(
            client, found.service, found.port, authkey_file=authkey_file, **options
        )
        client._rpc_owner_pid = -1
        client._rpc_authkey = _Secret(found.key)
        if found.entry is not None:
            client._rpc_seen = (found.entry.pid, found.entry.generation)
            client._rpc_server_pid = found.entry.pid
        client._rpc_state = ServiceState.RUNNING
        client._rpc_proxy = client._rpc_new_proxy(found.key)
        try:
            client._rpc_proxy._rpc_connection(wait_ready=False)
        except ServiceUnavailable:  # a stale entry, or a restart under way: wait for it
            client._rpc_connect(client._rpc_proxy, None, timeout_s)
        client._rpc_log.info("%s attached at %s", found.service, client._rpc_label())
        return client

    @classmethod
    def _rpc_attach_actor(
        cls: type[_Service], name: str | None, timeout_s: float, options: dict[str, Any]
    ) -> _Service:
        """``attach()`` to a Ray-backed service: its named actor, waited for up to ``timeout_s``."""
        from .ray_backend import RayProxy

        if not name:
            raise ValueError(f"{cls.__name__}.attach() of a Ray-backed service needs service_name=")
        options["backend"] = "ray"
        options.setdefault("ray_address", cls.rpc_ray_address)
        options.setdefault("ray_options", cls.rpc_ray_options)
        client: _Service = cls.__new__(cls)
        RPCServiceBase.__init__(client, name, cls.rpc_default_port or 1, **options)
        assert client.ray_options is not None
        proxy = RayProxy(
            service=name,
            namespace=client.ray_options.namespace,
            address=client.ray_address,
            methods=cls.rpc_server_methods,
        )
        deadline = client._clock() + timeout_s
        attempt = 0
        while True:
            try:
                client._rpc_server_pid = proxy._rpc_worker_pid(max(deadline - client._clock(), 0.1))
                break
            except ServiceUnavailable:
                remaining = deadline - client._clock()
                if remaining <= 0:
                    raise ServiceNotFound(service=name, port=None, timeout_s=timeout_s) from None
                attempt += 1
                client._sleep(
                    min(remaining, backoff_delay(attempt, initial=0.01, multiplier=2, maximum=0.5))
                )
        client._rpc_owner_pid = -1
        client._rpc_seen = (client._rpc_server_pid, 1)
        client._rpc_ray_proxy = proxy
        client._rpc_ray_cluster = proxy._rpc_cluster_address()
        client._rpc_state = ServiceState.RUNNING
        client._rpc_log.info("%s attached at %s", name, client._rpc_label())
        return client

    @property
    def state(self) -> ServiceState:
        return self._rpc_state

    @property
    def server_pid(self) -> int | None:
        """The running server's pid; None in direct mode or when stopped."""
        if self._rpc_state in (ServiceState.RUNNING, ServiceState.RESTARTING):
            return self._rpc_server_pid
        return None

    @property
    def is_owner(self) -> bool:
        """True in the process that started the server (and restarts and stops it)."""
        return self._rpc_owner_pid == os.getpid()

    @property
    def address(self) -> Address:
        """(host, port) over TCP; with ``transport="unix"``, the socket's path."""
        return self.endpoint.address

    @property
    def endpoint(self) -> Endpoint:
        if self.transport == "unix":
            return Endpoint(unix_socket_path(self.service_name, self.port, self.socket_dir))
        return Endpoint((self.host, self.port))

    @property
    def _server_proxy(self) -> ServerT:
        if self._rpc_state is ServiceState.DIRECT:
            return cast(ServerT, self._rpc_direct)
        proxy: Any = self._rpc_ray_proxy or self._rpc_proxy
        if proxy is None:
            if self._rpc_state is ServiceState.STOPPED:
                raise ServiceStopped(service=self.service_name)
            raise ServiceUnavailable(
                service=self.service_name,
                host=self.host,
                port=self.port,
                reason=f"the service is {self._rpc_state.value}; call _initialize_service() first",
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
        proxy: Any = self._server_proxy
        if self._rpc_state is ServiceState.DIRECT:
            return _call_in_thread(
                functools.partial(getattr(proxy, method), *args, **(kwargs or {}))
            )
        return cast("RPCProxy | RayProxy", proxy)._rpc_acall(method, args, kwargs, timeout_s)

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
        with self._rpc_lifecycle_lock:
            if self._rpc_state is not ServiceState.NEW:
                return
            if self.running_unit_tests:
                server = self._create_direct_server()
                self._rpc_direct = PicklingProxy(server) if self.direct_mode_pickle else server
                self._rpc_state = ServiceState.DIRECT
                self._rpc_log.debug("%s using a direct in-process server", self.service_name)
                return
            self._rpc_state = ServiceState.STARTING
            try:
                self._rpc_start_server()
            except BaseException:
                self._rpc_state = ServiceState.FAILED
                self._rpc_forget_key()
                raise
            self._rpc_state = ServiceState.RUNNING
            _LIVE_SERVICES.add(self)
        if self.enable_health_check and self.enable_auto_restart:
            self._rpc_start_watcher()
        if self._rpc_health_monitor and self.enable_health_check:
            self.start_health_monitor()

    def shutdown(self) -> None:
        """Stop the health monitor, close every connection; the owner also stops the server.

        Idempotent. A client that does not own its server closes only its connections.
        """
        self.stop_health_monitor()
        self._rpc_stop_watcher()
        with self._rpc_lifecycle_lock:
            state = self._rpc_state
            if state in (ServiceState.STOPPED, ServiceState.NEW):
                self._rpc_state = ServiceState.STOPPED
                return
            self._rpc_state = ServiceState.STOPPED
            self._rpc_direct = None
            if self._rpc_proxy is not None:
                self._rpc_proxy._rpc_close()
            if self.is_owner:
                self._rpc_stop_server_process()
                self._rpc_forget_key()
            if self._rpc_ray_proxy is not None:
                self._rpc_ray_proxy._rpc_close()
            _LIVE_SERVICES.discard(self)
        if self._rpc_dispatcher_obj is not None:
            self._rpc_dispatcher_obj.flush(timeout_s=1.0)
        self._rpc_log.info("%s shut down", self.service_name)

    def restart(self) -> bool:
        """Restart the server now (and re-arm the flapping guard). True if it is back."""
        with self._rpc_lifecycle_lock:
            self._rpc_supervisor.reset_flapping()
            return self._rpc_restart_server("manual restart")

    def rotate_authkey(self) -> bool:
        """Owner: restart the server with a new key. Attached clients must attach again."""
        if self.ray_options is not None:
            raise ServiceError(
                f"{self.service_name!r} runs on Ray (backend='ray'), which has no rpcgen key; "
                "Ray's own token authenticates its cluster"
            )
        if not self.is_owner:
            raise ServiceError(f"only the owner of {self.service_name!r} can rotate its key")
        with self._rpc_lifecycle_lock:
            self._rpc_forget_key()
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
        interval = max(interval_s if interval_s is not None else self.health_check_interval_s, 0.01)
        stop = threading.Event()
        thread = threading.Thread(
            target=_monitor_loop,
            args=(weakref.ref(self), stop, interval),
            name=f"rpcgen-health-{self.service_name}",
            daemon=True,
        )
        self._rpc_monitor, self._rpc_monitor_stop = thread, stop
        thread.start()

    def stop_health_monitor(self, timeout_s: float | None = None) -> None:
        thread, stop = self._rpc_monitor, self._rpc_monitor_stop
        if thread is None or stop is None:
            return
        stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout_s if timeout_s is not None else self.start_timeout_s + 5.0)
        self._rpc_monitor = self._rpc_monitor_stop = None

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

    def _rpc_label(self) -> str:
        if self.ray_options is not None:
            return f"ray:{self.ray_options.namespace}/{self.service_name}"
        return self.endpoint.label

    def __repr__(self) -> str:
        mode = "direct" if self.running_unit_tests else "rpc"
        pid = f" pid={self.server_pid}" if self.server_pid else ""
        return (
            f"<{type(self).__name__} service={self.service_name!r} mode={mode} "
            f"state={self._rpc_state.value} address={self._rpc_label()}{pid}>"
        )

    def __getstate__(self) -> dict[str, Any]:
        if self._rpc_state is ServiceState.DIRECT or self.running_unit_tests:
            raise NotPicklableError(service=self.service_name)
        if self._rpc_state is not ServiceState.RUNNING:
            raise ServiceUnavailable(
                service=self.service_name,
                host=self.host,
                port=self.port,
                reason="only a running client can be sent to another process "
                f"(it is {self._rpc_state.value})",
            )
        state = {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT}
        state["_rpc_health_monitor"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A client of the existing server, which it never owns; it follows restarts.
        self.__dict__.update(state)
        self._rpc_init_transient()
        self._rpc_owner_pid = -1
        if self.ray_options is not None:
            from .ray_backend import RayProxy

            self._rpc_ray_proxy = RayProxy(
                service=self.service_name,
                namespace=self.ray_options.namespace,
                address=self._rpc_ray_cluster,
                methods=self.rpc_server_methods,
            )
            return
        assert self._rpc_authkey is not None
        self._rpc_proxy = self._rpc_new_proxy(self._rpc_authkey.value)

    def _shutdown_if_owner(self) -> None:
        # A forked child inherits this object: it must never stop its parent's server.
        if self.is_owner:
            self.shutdown()
        else:
            for proxy in (self._rpc_proxy, self._rpc_ray_proxy):
                if proxy is not None:
                    proxy._rpc_close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_rpc_state", ServiceState.NEW) not in (
                ServiceState.NEW,
                ServiceState.STOPPED,
            ):
                self._shutdown_if_owner()
        except Exception:
            pass

    # -- internals: keys, the directory, following restarts ----------------------------

    def _rpc_key(self) -> bytes:
        """The service's key: made (or read from ``authkey_file``) once, kept across restarts.

        Made in memory: the directory's key file is written with the entry, once
        this process's server is ready, so a start that loses a race for the port
        never touches the winner's key file.
        """
        if self._rpc_authkey is None:
            if self.authkey_file is not None:
                key = directory.load_or_create_key(self.authkey_file)
            else:
                key = secrets.token_bytes(directory.KEY_BYTES)
            self._rpc_authkey = _Secret(key)
        return self._rpc_authkey.value

    def _rpc_key_path(self) -> Path:
        if self.authkey_file is not None:
            return Path(self.authkey_file)
        return directory.directory_folder() / f"{self.service_name}-{self.port}.key"

    def _rpc_forget_key(self) -> None:
        """Drop the key; remove the directory's key file only if it still holds ours."""
        if self.authkey_file is None and self._rpc_authkey is not None:
            with contextlib.suppress(OSError):
                path = self._rpc_key_path()
                if path.read_bytes() == self._rpc_authkey.value:
                    path.unlink()
        self._rpc_authkey = None

    def _rpc_publish(self, process: BaseProcess) -> None:
        import psutil

        pid = int(process.pid or 0)
        generation = self._rpc_seen[1] + 1
        endpoint = self.endpoint
        try:
            directory.directory_folder()
        except OSError as exc:  # e.g. another user made /tmp/rpcgen-<uid>: never write there
            self._rpc_log.warning(
                "%s: not published in the service directory (%s): attach() cannot find it",
                self.service_name,
                exc,
            )
            self._rpc_seen = (pid, generation)
            return
        if self.authkey_file is None:  # the key first: an entry never names a missing key
            directory.write_key(self._rpc_key_path(), self._rpc_key())
        directory.publish(
            directory.DirectoryEntry(
                service=self.service_name,
                host=self.host,
                port=self.port,
                address=endpoint.path or [self.host, self.port],
                pid=pid,
                create_time=psutil.Process(pid).create_time(),
                owner_pid=os.getpid(),
                generation=generation,
                key_file=str(self._rpc_key_path()),
                start_ticks=(directory.proc_stat(pid) or ("", 0))[1],
            )
        )
        self._rpc_seen = (pid, generation)

    def _rpc_follow(self, timeout_s: float) -> bool:
        """Non-owner: wait (bounded) until the server is published live; note a restart."""
        if not is_loopback(self.host) and self.transport == "tcp":
            return True  # another host: no directory here; connecting is the only test
        try:
            entry = wait_until_published(self.service_name, self.port, timeout_s)
        except OSError:
            return True  # no usable directory: connecting (same key) is the only test
        if entry is None:
            return False
        if (entry.pid, entry.generation) != self._rpc_seen:
            self._rpc_seen = (entry.pid, entry.generation)
            self._rpc_server_pid = entry.pid
            proxy = self._rpc_proxy
            key = directory.read_key(entry.key_file)
            if (
                proxy is not None
                and self._rpc_authkey is not None
                and key != self._rpc_authkey.value
            ):
                self._rpc_authkey = _Secret(key)  # rotated by its owner
                proxy._rpc_rebind(proxy._rpc_address, key)
        return True

    def _rpc_become_follower(self) -> None:
        """In a forked child: this copy no longer owns the server; it follows it."""
        watcher, self._rpc_watcher = self._rpc_watcher, None
        if watcher is not None:  # its thread is not in this process; its pipe is a copy
            watcher.stop(0)
        self._rpc_monitor = self._rpc_monitor_stop = None
        if self._rpc_proxy is not None:
            self._rpc_proxy._rpc_wait_ready = self._rpc_follow

    # -- internals: start / stop ------------------------------------------------------

    def _rpc_new_proxy(self, authkey: bytes) -> RPCProxy:
        return RPCProxy(
            service=self.service_name,
            address=self.address,
            authkey=authkey,
            connect_timeout_s=self.connect_timeout_s,
            wait_ready=self._rpc_not_restarting.wait if self.is_owner else self._rpc_follow,
        )

    def _rpc_start_server(self) -> int | None:
        if self.ray_options is not None:
            return self._rpc_start_actor()
        address = self.address
        cleanup_stale(
            self.service_name,
            address,
            timeout_s=self.shutdown_timeout_s,
            logger=self._rpc_log,
            clock=self._clock,
            sleep=self._sleep,
        )
        self._rpc_owner_pid = os.getpid()
        authkey = self._rpc_key()
        ready = ReadySignal(multiprocessing.get_context(self._rpc_start_method))
        try:
            process = self._start_server_process(address, authkey, ready)
            ready.close_writer()
            try:
                wait_until_ready(
                    process,
                    ready,
                    service=self.service_name,
                    port=self.port,
                    timeout_s=self.start_timeout_s,
                    clock=self._clock,
                )
            except BaseException:
                if process.exitcode is None:
                    stop_process(
                        process, join_timeout_s=self.shutdown_timeout_s, logger=self._rpc_log
                    )
                process.close()
                raise
        finally:
            ready.close()
        self._rpc_process = process
        self._rpc_server_pid = process.pid
        if self._rpc_proxy is None:
            self._rpc_proxy = self._rpc_new_proxy(authkey)
        else:
            self._rpc_proxy._rpc_rebind(address, authkey)
        self._rpc_log.info(
            "%s server started (pid %s) on %s", self.service_name, process.pid, self._rpc_label()
        )
        try:
            self._rpc_connect(self._rpc_proxy, process, self.connect_timeout_s)
            self._rpc_publish(process)
        except BaseException:
            self._rpc_stop_server_process()
            raise
        if self._rpc_watcher is not None:
            self._rpc_watcher.wake()  # watch the new process
        return process.pid

    def _rpc_start_actor(self) -> int:
        """backend="ray": create the service's actor; its worker's pid once it answers."""
        from .ray_backend import RayHost

        assert self.ray_options is not None
        self._rpc_owner_pid = os.getpid()
        host = self._rpc_ray
        if host is None:
            host = self._rpc_ray = RayHost(
                client=self,
                options=self.ray_options,
                address=self.ray_address,
                log=self._rpc_log,
                clock=self._clock,
                sleep=self._sleep,
            )
        pid = host.start(self.start_timeout_s, self.shutdown_timeout_s)
        self._rpc_actor_started(host, pid)
        return pid

    def _rpc_actor_started(self, host: RayHost, pid: int) -> None:
        self._rpc_ray_proxy = host.proxy
        self._rpc_ray_cluster = host.proxy._rpc_cluster_address()
        self._rpc_server_pid = pid
        self._rpc_seen = (pid, self._rpc_seen[1] + 1)
        self._rpc_log.info(
            "%s actor started (worker pid %s) as %s", self.service_name, pid, self._rpc_label()
        )

    def _rpc_connect(self, proxy: RPCProxy, process: BaseProcess | None, timeout_s: float) -> None:
        """Open this thread's connection, retrying with backoff under a deadline."""
        deadline = self._clock() + timeout_s
        attempt = 0
        while True:
            try:
                proxy._rpc_connection(wait_ready=False)  # we are the start/restart/attach
                return
            except ServiceAuthenticationError:
                raise
            except ServiceUnavailable:
                attempt += 1
                remaining = deadline - self._clock()
                if remaining <= 0 or (process is not None and process.exitcode is not None):
                    raise
                self._sleep(
                    min(remaining, backoff_delay(attempt, initial=0.01, multiplier=2, maximum=0.5))
                )

    def _rpc_stop_server_process(self) -> None:
        if self._rpc_ray is not None and self.is_owner:
            self._rpc_ray.stop(self.shutdown_timeout_s)
            return
        process, self._rpc_process = self._rpc_process, None
        if process is None or not self.is_owner:
            return
        authkey = self._rpc_authkey.value if self._rpc_authkey else None
        address = self.address

        def graceful() -> None:
            if authkey is not None:
                request_shutdown(
                    address, authkey, service=self.service_name, timeout_s=self.shutdown_timeout_s
                )

        code = stop_process(
            process, join_timeout_s=self.shutdown_timeout_s, graceful=graceful, logger=self._rpc_log
        )
        self._rpc_log.debug("%s server pid %s exited with %s", self.service_name, process.pid, code)
        with contextlib.suppress(OSError):  # an unusable directory was never written to
            directory.withdraw(self.service_name, self.port, int(process.pid or 0))
        process.close()
        if not wait_address_free(
            address, timeout_s=self.shutdown_timeout_s, clock=self._clock, sleep=self._sleep
        ):
            self._rpc_log.warning("%s still busy after %s stopped", address, self.service_name)
        else:  # the server was killed before it could remove its socket file
            Endpoint.of(address).remove_file()

    def _rpc_restart_server(self, reason: str, failed: tuple[int, int] | None = None) -> bool:
        """Restart (owner only). ``failed``: the server seen failing; if another has
        replaced it meanwhile (the watcher and a health check both saw it die), done."""
        if not self.is_owner:
            self._rpc_log.warning(
                "%s: only the process that owns its server restarts it", self.service_name
            )
            return False
        with self._rpc_lifecycle_lock:
            if self._rpc_state in (ServiceState.STOPPED, ServiceState.DIRECT, ServiceState.NEW):
                return False
            if failed is not None and failed != self._rpc_seen:
                return self._rpc_state is ServiceState.RUNNING
            self._rpc_not_restarting.clear()
            self._rpc_state = ServiceState.RESTARTING
            try:
                outcome = self._rpc_supervisor.restart(reason, self._rpc_restart_once)
            finally:
                self._rpc_not_restarting.set()
            ok = outcome is RestartOutcome.RESTARTED
            self._rpc_state = ServiceState.RUNNING if ok else ServiceState.FAILED
            return ok

    def _rpc_restart_once(self) -> int | None:
        if self._rpc_ray is not None:  # kill it: Ray restarts it (or we make it anew)
            pid = self._rpc_ray.restart(self.start_timeout_s, self._rpc_server_pid)
            self._rpc_actor_started(self._rpc_ray, pid)
            return pid
        self._rpc_stop_server_process()
        return self._rpc_start_server()

    # -- internals: supervision -----------------------------------------------------------

    def _rpc_start_watcher(self) -> None:
        """Owner: a thread that restarts the server as soon as its process dies."""
        if self._rpc_watcher is None and self.is_owner and self.ray_options is None:
            self._rpc_watcher = ProcessWatcher(self, self.service_name)

    def _rpc_stop_watcher(self) -> None:
        watcher, self._rpc_watcher = self._rpc_watcher, None
        if watcher is not None:
            watcher.stop(self.start_timeout_s + 5.0)

    def _rpc_watch_target(self) -> tuple[BaseProcess, int] | None:
        """The server process and its sentinel, read together under the lifecycle lock
        (a restart closes the old process object)."""
        with self._rpc_lifecycle_lock:
            process = self._rpc_process
            if process is None or self._rpc_state is not ServiceState.RUNNING:
                return None
            return process, process.sentinel

    def _rpc_on_process_exit(self, process: BaseProcess) -> None:
        with self._rpc_lifecycle_lock:
            if process is not self._rpc_process or self._rpc_state is not ServiceState.RUNNING:
                return  # stopped or restarted meanwhile
            code, seen = process.exitcode, self._rpc_seen
        self._rpc_supervisor.tracker.record_failure(self._rpc_now_ms(None), fatal=True)
        if self._rpc_restart_server(f"server process exited (exit code {code})", seen):
            self._rpc_supervisor.tracker.restarted()

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
        self._rpc_probed = self._rpc_seen
        if self._rpc_ray_proxy is not None:
            return self._rpc_probe_actor(self._rpc_ray_proxy)
        if self._rpc_state is ServiceState.DIRECT:
            target: Any = self._rpc_direct
        else:
            if self.is_owner and not self._rpc_not_restarting.is_set():
                # The watcher is restarting a dead server: judge the new one.
                self._rpc_not_restarting.wait(self.start_timeout_s + self.connect_timeout_s)
                self._rpc_probed = self._rpc_seen
            gone = self._rpc_process_gone(0.0) if self.is_owner else None
            if gone is not None:
                return Probe(FailureKind.TRANSPORT, gone, True)
            target = self._rpc_proxy
            if target is None:
                return Probe(FailureKind.TRANSPORT, f"service is {self._rpc_state.value}", True)
        try:
            if isinstance(target, RPCProxy):
                result = target._rpc_call(
                    "health_check_rpc", timeout_s=self.health_policy.check_timeout_s
                )
            else:
                result = target.health_check_rpc()
        except CallTimeout as exc:
            return Probe(FailureKind.TRANSPORT, exc.reason)
        except (ServiceUnavailable, ServiceStopped) as exc:
            # A reset connection usually means the process is dying. After SIGKILL the
            # thread-group leader shows as a zombie before its other threads are gone,
            # and cannot be reaped until they are: give it a moment, then look again.
            gone = self._rpc_process_gone(0.2) if self.is_owner else None
            if gone is not None:
                return Probe(FailureKind.TRANSPORT, gone, True)
            reason = exc.reason if isinstance(exc, ServiceUnavailable) else str(exc)
            return Probe(FailureKind.TRANSPORT, reason)
        except Exception as exc:
            return Probe(FailureKind.REMOTE, f"health_check_rpc raised {exc!r}")
        status = result.get("status") if isinstance(result, dict) else None
        if status != "ok":
            return Probe(FailureKind.STATUS, f"health_check_rpc returned {result!r}")
        return HEALTHY

    def _rpc_probe_actor(self, proxy: RayProxy) -> Probe:
        """One health check of a Ray-backed service; notes a restart Ray made."""
        try:
            pid, result = proxy._rpc_health(
                self.health_policy.check_timeout_s, self.start_timeout_s, self._clock, self._sleep
            )
        except CallTimeout as exc:
            return Probe(FailureKind.TRANSPORT, exc.reason)
        except (ServiceUnavailable, ServiceStopped) as exc:
            reason = exc.reason if isinstance(exc, ServiceUnavailable) else str(exc)
            return Probe(FailureKind.TRANSPORT, reason)
        except Exception as exc:
            return Probe(FailureKind.REMOTE, f"health_check_rpc raised {exc!r}")
        old = self._rpc_server_pid
        if pid != old:
            self._rpc_server_pid = pid
            self._rpc_seen = self._rpc_probed = (pid, self._rpc_seen[1] + 1)
            if old is not None:
                self._rpc_notify(
                    f"{self.service_name}: Ray restarted its actor after it died "
                    f"(worker pid {old} -> {pid})",
                    "warning",
                )
        status = result.get("status") if isinstance(result, dict) else None
        if status != "ok":
            return Probe(FailureKind.STATUS, f"health_check_rpc returned {result!r}")
        return HEALTHY

    def _rpc_process_gone(self, wait_s: float) -> str | None:
        """Owner: why its server process is gone, or None if it runs (or is busy).

        Only under the lifecycle lock, never beside the watcher or a restart: two
        threads waiting on one child race in waitpid (one reaps it, the other gets
        ECHILD and takes it for alive), and Process.close() then fails.
        """
        if not self._rpc_lifecycle_lock.acquire(timeout=self.health_policy.check_timeout_s):
            return None  # a restart holds it: judge the new server next time
        try:
            process = self._rpc_process
            if process is not None and wait_s:
                process.join(wait_s)
            code = process.exitcode if process is not None else None
            if process is not None and code is None:
                return None
            return f"server process is gone (exit code {code})"
        finally:
            self._rpc_lifecycle_lock.release()

    def _rpc_on_unhealthy(self, reason: str) -> bool:
        """At the threshold: the owner restarts; another client stops a hung server."""
        if self.is_owner:
            return self._rpc_restart_server(reason, self._rpc_probed)
        if self.ray_options is not None:
            self._rpc_log.warning(
                "%s is unhealthy (its owner restarts it): %s", self.service_name, reason
            )
            return False
        if self.transport == "tcp" and not is_loopback(self.host):
            self._rpc_log.warning("%s on another host is unhealthy: %s", self.service_name, reason)
            return False
        return stop_hung_server(
            self.service_name,
            self.port,
            timeout_s=self.shutdown_timeout_s,
            log=self._rpc_log,
            clock=self._clock,
            sleep=self._sleep,
        )

    def _rpc_notify(self, message: str, level: str) -> None:
        self._rpc_dispatcher.notify(message, level)
