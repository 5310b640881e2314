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

import functools
import logging
import multiprocessing
import os
import ssl
import time
from abc import ABCMeta, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from .aio import AsyncView
from .announce import ReadySignal
from .backend import Backend
from .backends import ClientHooks, direct_server, make_backend
from .constants import (
    DEFAULT_HANDSHAKE_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_SHARED_MEMORY_BYTES,
)
from .endpoint import Address, Endpoint
from .errors import (
    ServiceError,
    ServiceStopped,
    ServiceUnavailable,
)
from .health import HealthPolicy, RestartPolicy
from .keeper import ServiceKeeper
from .lifecycle import OWNERS, Lifecycle, ServiceState, weakly
from .notify import Notifier
from .process import launch
from .serve import serve_rpc
from .settings import RayOptions, ServiceSettings, check_call_options, check_client_settings
from .sharing import SharedClient
from .tls import TlsPolicy

__all__ = ["RPCServiceBase", "ServiceState"]

ServerT = TypeVar("ServerT")
_R = TypeVar("_R")
_Service = TypeVar("_Service", bound="RPCServiceBase[Any]")


_UNSET: Any = object()


class NoServer:
    """``_server_proxy`` while there is no server to call: falsy, and any call through it
    raises the error ``why()`` builds (a fresh one each time)."""

    __slots__ = ("_why",)

    def __init__(self, why: Callable[[], Exception]) -> None:
        self._why = why

    def __bool__(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise self._why()

    def __repr__(self) -> str:
        return f"<no server: {self._why()}>"


class RPCServiceBase(SharedClient, Generic[ServerT], metaclass=ABCMeta):
    """Base class for a client whose server object runs in its own process.

    Subclasses implement :meth:`_create_direct_server` and
    :meth:`_start_server_process`, then call :meth:`_initialize_service`. Client
    methods forward to ``self._server_proxy.<method>_rpc(...)``. A subclass that
    misses one of the two cannot be constructed (``TypeError``).

    The server object is called from several threads at once: BaseManager serves
    each client connection (one per client thread) in its own thread.

    Where the server runs is the backend's business (:mod:`rpcgen.runtime.backends`
    chooses it once, from the settings).
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
    #: The attributes holding the clients that the server object is built with (the
    #: services it uses): a Ray actor's server gets them too.
    rpc_server_dependencies: tuple[str, ...] = ()
    #: Server methods safe to run twice (marked ``@idempotent``): a call to one is tried
    #: again across a restart or a lost connection, within its timeout.
    rpc_idempotent_methods: tuple[str, ...] = ()
    #: Streaming server methods (generators): with backend="ray" they are called as
    #: Ray streaming generators (the other backends need no list).
    rpc_stream_methods: tuple[str, ...] = ()

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
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        authkey_file: str | os.PathLike[str] | None = None,
        backend: str = "process",
        ray_address: str | None = None,
        ray_options: RayOptions | None = None,
        tls: str = "auto",
        ssl_context: Callable[[bool], ssl.SSLContext] | None = None,
        call_timeout_s: float | None = None,
        stream_window: tuple[int, int] | None = None,
        shared_memory_bytes: int = DEFAULT_SHARED_MEMORY_BYTES,
    ) -> None:
        tls_policy = TlsPolicy(tls, ssl_context)  # checks both (ValueError, one line)
        check_call_options(call_timeout_s, stream_window, shared_memory_bytes)
        check_client_settings(
            service_name,
            port,
            host=host,
            transport=transport,
            socket_dir=socket_dir,
            authkey_file=authkey_file,
            handshake_timeout_s=handshake_timeout_s,
            max_concurrent_calls=max_concurrent_calls,
            max_message_bytes=max_message_bytes,
            backend=backend,
            ray_address=ray_address,
            ray_options=ray_options,
            tls=tls_policy,
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
        #: "auto" (TLS off loopback), "on", or "insecure-plaintext"; and the user's context
        self.tls = tls
        self.ssl_context = ssl_context
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
        self.max_message_bytes = max_message_bytes
        self.health_policy = HealthPolicy(
            interval_s=health_check_interval_s,
            max_consecutive_failures=max_consecutive_failures,
            auto_restart=enable_auto_restart,
            check_timeout_s=health_check_timeout_s,
        )
        self.restart_policy = restart_policy or RestartPolicy()
        self.direct_mode_pickle = direct_mode_pickle
        #: a call's timeout where it gives none and no ``deadline()`` block applies
        self.call_timeout_s = call_timeout_s
        #: (items, bytes) a stream's server may send ahead of its consumer
        self.stream_window = stream_window
        self.shared_memory_bytes = shared_memory_bytes
        self._rpc_health_monitor = health_monitor
        self._rpc_start_method = start_method
        self._clock = clock
        self._sleep = sleep
        self._rpc_init_transient()

    @classmethod
    def _rpc_bare(cls: type[_Service], service_name: str, port: int, **options: Any) -> _Service:
        """An instance with only this base class's ``__init__`` run: the subclass's own
        arguments are not known to ``attach()`` or inside a Ray actor."""
        client: _Service = cls.__new__(cls)
        RPCServiceBase.__init__(client, service_name, port, **options)
        return client

    def _rpc_init_transient(self) -> None:
        self._rpc_log = logging.getLogger(f"rpcgen.{self.service_name}")
        self._rpc_life = Lifecycle()
        # Made on first use: many clients (attached ones above all) never need it.
        self._rpc_keeper_obj: ServiceKeeper | None = None
        self._rpc_backend: Backend = self._rpc_make_backend()

    def _rpc_make_backend(self) -> Backend:
        """The backend, chosen once from the settings; tests override it with a fake."""
        hooks = ClientHooks(
            create_direct_server=weakly(self._create_direct_server),
            start_server_process=weakly(self._start_server_process),
            make_server_elsewhere=functools.partial(
                direct_server,
                type(self),
                self.service_name,
                self.port,
                {a: getattr(self, a) for a in self.rpc_server_dependencies if hasattr(self, a)},
            ),
            notify=weakly(self._rpc_notify),
        )
        return make_backend(
            self._rpc_settings(),
            hooks,
            life=self._rpc_life,
            log=self._rpc_log,
            clock=self._clock,
            sleep=self._sleep,
        )

    def _rpc_settings(self) -> ServiceSettings:
        return ServiceSettings(
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
            max_message_bytes=self.max_message_bytes,
            backend="direct" if self.running_unit_tests else self.backend,
            direct_pickle=self.direct_mode_pickle,
            ray_address=self.ray_address,
            ray_options=self.ray_options,
            server_methods=tuple(self.rpc_server_methods),
            stream_methods=tuple(self.rpc_stream_methods),
            tls=self._rpc_tls_policy(),
            call_timeout_s=getattr(self, "call_timeout_s", None),
            idempotent=frozenset(self.rpc_idempotent_methods),
            stream_window=getattr(self, "stream_window", None),
            shared_memory_bytes=getattr(self, "shared_memory_bytes", DEFAULT_SHARED_MEMORY_BYTES),
        )

    def _rpc_tls_policy(self) -> TlsPolicy:
        # getattr: a client pickled by an older rpcgen has neither attribute
        return TlsPolicy(getattr(self, "tls", "auto"), getattr(self, "ssl_context", None))

    @property
    def _rpc_keeper(self) -> ServiceKeeper:
        if self._rpc_keeper_obj is None:
            self._rpc_keeper_obj = ServiceKeeper(
                name=self.service_name,
                life=self._rpc_life,
                backend=self._rpc_backend,
                health=self.health_policy,
                restart=self.restart_policy,
                notifiers=[n for n in (self.notifier, self.slack_notifier) if n is not None],
                log=self._rpc_log,
                clock=self._clock,
                sleep=self._sleep,
            )
        return self._rpc_keeper_obj

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
            max_message_bytes=self.max_message_bytes,
            tls=self._rpc_tls_policy(),
        )

    def _launch_server_process(self, target: Callable[..., Any], *args: Any) -> BaseProcess:
        """Start ``target(*args)`` as a daemon process with this service's start method.

        ``target`` should be a module-level function so that spawn and
        forkserver can pickle it. A server handed the client of a Ray-backed service
        is started with forkserver where this one would fork: a forked copy of a Ray
        driver cannot use Ray (its calls hang), a fresh interpreter connects anew.
        """
        method = self._rpc_start_method
        if multiprocessing.get_context(method).get_start_method() == "fork" and any(
            isinstance(arg, RPCServiceBase) and arg.backend == "ray" and not arg.running_unit_tests
            for arg in args
        ):
            method = "forkserver"
        return launch(target, args, start_method=method, name=f"rpcgen-{self.service_name}")

    # -- public API -----------------------------------------------------------------

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
    def address(self) -> Address:
        """(host, port) over TCP; with ``transport="unix"``, the socket's path."""
        return self.endpoint.address

    @property
    def endpoint(self) -> Endpoint:
        return self._rpc_settings().endpoint

    @property
    def _server_proxy(self) -> ServerT:
        """The server's methods (``self._server_proxy.method_rpc(...)``).

        While there is no server to call (not started, or shut down) it is falsy, as the
        design doc's ``None`` was (``if not self._server_proxy:``), and a call through it
        raises the typed error (:class:`ServiceStopped` after ``shutdown()``). Assigning
        it (as an upstream ``__setstate__`` does) holds the value until the next
        ``_initialize_service()``.
        """
        assigned = self.__dict__.get("_rpc_assigned_proxy", _UNSET)
        if assigned is not _UNSET:
            return cast(ServerT, assigned)
        proxy = self._rpc_backend.proxy
        if proxy is None or self._rpc_life.state is ServiceState.STOPPED:
            return cast(ServerT, NoServer(self._rpc_no_server))
        return cast(ServerT, proxy)

    @_server_proxy.setter
    def _server_proxy(self, value: Any) -> None:
        self.__dict__["_rpc_assigned_proxy"] = value

    @property
    def _server_process(self) -> BaseProcess | None:
        """The server's process, owner side (the design doc's ``_server_process``: ``.pid``,
        ``.is_alive()``); None in direct mode, for other clients, and on Ray. Read-only."""
        return cast("BaseProcess | None", getattr(self._rpc_backend, "process", None))

    @property
    def health_check_interval_ms(self) -> float:
        """The design doc's name for ``health_check_interval_s`` (read-only)."""
        return self.health_check_interval_s * 1000.0

    def _rpc_no_server(self) -> ServiceError:
        """Why there is no server to call: stopped, or not started (yet)."""
        state = self._rpc_life.state
        if state is ServiceState.STOPPED:
            return ServiceStopped(service=self.service_name)
        return ServiceUnavailable(
            service=self.service_name,
            host=self.host,
            port=self.port,
            reason=f"the service is {state.value}; call _initialize_service() first",
        )

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
        calls = self._rpc_backend.calls
        if calls is None:
            raise self._rpc_no_server()
        return calls._rpc_acall(method, args, kwargs, timeout_s)

    def _rpc_astream(
        self, method: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> AsyncIterator[Any]:
        """Iterate streaming server method ``method`` with ``async for``."""
        calls = self._rpc_backend.calls
        if calls is None:
            raise self._rpc_no_server()
        return calls._rpc_astream(method, args, kwargs)

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
        self.__dict__.pop("_rpc_assigned_proxy", None)  # the server's own proxy again
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
            OWNERS.add(self)
        if self.enable_health_check and self.enable_auto_restart:
            self._rpc_backend.watch(self._rpc_keeper.server_died)
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
            OWNERS.discard(self)
        if self._rpc_keeper_obj is not None:
            self._rpc_keeper_obj.flush(timeout_s=1.0)
        self._rpc_log.info("%s shut down", self.service_name)

    def restart(self) -> bool:
        """Restart the server now (and re-arm the flapping guard). True if it is back."""
        return self._rpc_keeper.restart_now("manual restart")

    def rotate_authkey(self) -> bool:
        """Owner: restart the server with a new key. Attached clients must attach again."""
        if not self.is_owner:
            raise ServiceError(f"only the owner of {self.service_name!r} can rotate its key")
        with self._rpc_life.lock:
            self._rpc_backend.rotate_key()
            return self._rpc_keeper.restart_server("authkey rotated")

    def health_check(self, current_time_ms: float | None = None) -> bool:
        """Check the server's health, at most once per ``health_check_interval_s``.

        Returns the last result while rate limited (never "healthy" while
        failing). Counts consecutive failures and, at ``max_consecutive_failures``,
        restarts the server (the owner), stops a hung server so that its owner
        restarts it (any other client), or, with auto-restart off, asks for manual
        intervention. Never raises.
        """
        if not self.enable_health_check:
            return True
        if self._rpc_life.state is ServiceState.STOPPED:
            # Not a transport failure to log and count: the service was shut down.
            self._rpc_log.debug("%s is shut down: health_check() is False", self.service_name)
            return False
        return self._rpc_keeper.health_check(current_time_ms)

    def start_health_monitor(self, interval_s: float | None = None) -> None:
        """Run health checks in a daemon thread every ``interval_s`` (default: the
        health-check interval) until :meth:`shutdown`."""
        interval = interval_s if interval_s is not None else self.health_check_interval_s
        self._rpc_keeper.start_monitor(interval)

    def stop_health_monitor(self, timeout_s: float | None = None) -> None:
        if self._rpc_keeper_obj is not None:
            wait = timeout_s if timeout_s is not None else self.start_timeout_s + 5.0
            self._rpc_keeper_obj.stop_monitor(wait)

    def flush_notifications(self, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) until queued notifications were delivered."""
        return self._rpc_keeper.flush(timeout_s)

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

    def _rpc_notify(self, message: str, level: str) -> None:
        self._rpc_keeper.notify(message, level)
