"""The Ray backend: the server object inside a named Ray actor.

Imported only when a client has ``backend="ray"``; ray itself is imported on
first use, and a missing ray is one line: ``pip install 'rpcgen[ray]'``.

One actor per service, named after it in a namespace (default ``"rpcgen"``)::

    owner ── RayHost.start() ──> ServiceActor(client class) ── _create_direct_server()
      │                               ▲
      └── RayProxy.<method>_rpc() ────┘  (any client: owner, attached, unpickled)

Restarts: Ray restarts a dead actor (``max_restarts``, default -1: always); a
health check that finds a new worker pid says so. A *hung* actor (failing
``max_consecutive_failures`` health checks) its owner kills, and Ray restarts
it; an actor Ray has given up on, its owner creates anew. Server exceptions
travel as with the process backend (:mod:`rpcgen.runtime.remote`): the
original type, the server's traceback chained as the cause.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import importlib.util
import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from .backend import RayOptions
from .errors import (
    BackendNotInstalled,
    CallTimeout,
    RemoteCallError,
    ServiceAlreadyRunning,
    ServiceStopped,
    ServiceUnavailable,
    StartupError,
    StartupTimeout,
)
from .health import backoff_delay
from .remote import RaisedInfo, pack_exception, unpack_exception
from .transport import CallsByName

__all__ = [
    "RayHost",
    "RayProxy",
    "ServiceActor",
    "connect",
    "import_ray",
    "list_services",
]

_connect_lock = threading.Lock()
_hosts: weakref.WeakSet[RayHost] = weakref.WeakSet()
_exit_hook_registered = False


def import_ray(service: str) -> Any:
    """The ray module, or :class:`BackendNotInstalled` (one line) if it is missing."""
    try:
        return importlib.import_module("ray")
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise
        raise BackendNotInstalled(service=service, backend="ray", extra="ray") from None


def connect(service: str, address: str | None) -> Any:
    """Ray, connected: to ``address``, else ``$RAY_ADDRESS``, else a local Ray started here.

    A program that already called ``ray.init()`` keeps its connection. A local Ray
    runs without its dashboard and stops when this program ends (Ray's own exit hook).
    """
    global _exit_hook_registered
    ray = import_ray(service)
    with _connect_lock:
        if not ray.is_initialized():
            target = address or os.environ.get("RAY_ADDRESS") or None
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            quiet: dict[str, Any] = {"logging_level": logging.WARNING}
            if target and target != "auto" and not _reachable(target, 5.0):
                # ray.init() would retry for a long while before it says so
                raise ServiceUnavailable(
                    service=service,
                    host="ray",
                    port=target,
                    reason="no Ray cluster answers at that address (ray_address or "
                    "$RAY_ADDRESS; start one with `ray start --head`)",
                )
            try:
                if target:
                    ray.init(address=target, **quiet)
                else:
                    ray.init(include_dashboard=False, **quiet)
            except Exception as exc:  # e.g. InvalidAuthToken: RAY_AUTH_MODE/_TOKEN_PATH
                raise ServiceUnavailable(
                    service=service,
                    host="ray",
                    port=target or "local",
                    reason=f"ray.init() failed: {type(exc).__name__}: {_first_line(exc)}",
                ) from exc
        if not _exit_hook_registered:
            # Registered after ray.init(), so it runs before Ray's own exit hook
            # disconnects: detached actors would outlive us otherwise.
            atexit.register(_stop_hosts_at_exit)
            _exit_hook_registered = True
    return ray


def _stop_hosts_at_exit() -> None:
    for host in list(_hosts):
        if host.owner_pid == os.getpid():
            with contextlib.suppress(Exception):  # at exit, nothing is left to tell
                host.stop()


def worker_runtime_env() -> dict[str, Any]:
    """Ray workers do not get the driver's ``sys.path``: pass it, so that the user's
    server module imports there as it does here."""
    paths = dict.fromkeys(os.path.abspath(p or os.curdir) for p in sys.path)
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if os.path.isdir(p))}}


# -- inside the actor ------------------------------------------------------------------


class Raised:
    """A server method's exception, as the process backend sends it."""

    __slots__ = ("info",)

    def __init__(self, info: RaisedInfo) -> None:
        self.info = info

    def __reduce__(self) -> tuple[Any, ...]:
        return (Raised, (self.info,))


class Refused:
    """A call the actor does not run (a private or missing method): why, as text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        return (Refused, (self.text,))


class ServiceActor:
    """The actor's class: builds the server with the client class's
    ``_create_direct_server()`` and runs its public methods."""

    def __init__(
        self, client_cls: type[Any], service: str, port: int, owner: dict[str, Any]
    ) -> None:
        from .service import RPCServiceBase

        maker: Any = object.__new__(client_cls)
        RPCServiceBase.__init__(maker, service, port, running_unit_tests=True)
        self._server = maker._create_direct_server()
        self._owner = owner
        self._started = time.time()

    def rpcgen_call(self, request: tuple[str, tuple[Any, ...], dict[str, Any]]) -> Any:
        """Any public server method, by name (for methods the actor class does not name).

        One argument: Ray serializes each argument on its own (three cost ~0.3 ms more).
        """
        method, args, kwargs = request
        return self._rpcgen_run(method, args, kwargs)

    def _rpcgen_run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        function = None if method.startswith("_") else getattr(self._server, method, None)
        if not callable(function):
            return Refused(
                f"method {method!r} of {type(self._server).__name__!r} is not exposed "
                "(only public methods are)"
            )
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            return Raised(pack_exception(exc))

    def rpcgen_health(self) -> tuple[int, Any]:
        """(worker pid, what ``health_check_rpc`` returned); the start's readiness test."""
        check = getattr(self._server, "health_check_rpc", None)
        if not callable(check):
            return os.getpid(), {"status": "ok"}
        try:
            return os.getpid(), check()
        except Exception as exc:
            return os.getpid(), Raised(pack_exception(exc))

    def rpcgen_info(self) -> dict[str, Any]:
        ray: Any = importlib.import_module("ray")
        context = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(),
            "node_id": context.get_node_id(),
            "owner": dict(self._owner),
            "started": self._started,
            "server_class": type(self._server).__qualname__,
        }


_actor_classes: dict[tuple[str, tuple[str, ...]], Any] = {}


def _forwarder(name: str) -> Callable[..., Any]:
    def method(self: ServiceActor, *args: Any, **kwargs: Any) -> Any:
        return self._rpcgen_run(name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    return method


def _actor_class(ray: Any, service: str, methods: tuple[str, ...]) -> Any:
    """The actor class: :class:`ServiceActor`, plus one actor method per server method
    the client names (``rpc_server_methods``), so that a call passes the server
    method's own arguments and nothing else, as a raw Ray actor call does."""
    key = (service, methods)
    cls = _actor_classes.get(key)
    if cls is None:
        own = {name: _forwarder(name) for name in methods if _is_forwardable(name)}
        body = type(f"ServiceActor_{service}", (ServiceActor,), own)
        cls = _actor_classes[key] = ray.remote(body)
    return cls


def _is_forwardable(name: str) -> bool:
    return name.isidentifier() and not name.startswith("_") and not name.startswith("rpcgen_")


# -- the client side -------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class RayProxy(CallsByName):
    """``_server_proxy`` for a Ray-backed service: ``proxy.method_rpc(*args)`` calls the
    actor and blocks; :meth:`_rpc_acall` awaits it. Finds the actor by name on first
    use, so an unpickled copy in another process (or Ray worker) works too."""

    def __init__(
        self,
        *,
        service: str,
        namespace: str,
        address: str | None,
        handle: Any = None,
        methods: tuple[str, ...] = (),
    ) -> None:
        #: server methods the actor class has as its own actor methods
        self._rpc_methods = frozenset(name for name in methods if _is_forwardable(name))
        self._rpc_service = service
        self._rpc_namespace = namespace
        self._rpc_cluster = address
        self._rpc_handle = handle
        self._rpc_ray: Any = None
        self._rpc_closed = False

    @property
    def _rpc_where(self) -> str:
        return f"{self._rpc_namespace}/{self._rpc_service}"

    def __repr__(self) -> str:
        return f"<RayProxy service={self._rpc_service!r} actor=ray:{self._rpc_where}>"

    def _rpc_unavailable(self, reason: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            service=self._rpc_service, host="ray", port=self._rpc_where, reason=reason
        )

    def _rpc_actor(self) -> tuple[Any, Any]:
        """(ray, the actor's handle)."""
        if self._rpc_closed:
            raise ServiceStopped(service=self._rpc_service)
        handle, ray = self._rpc_handle, self._rpc_ray
        if handle is not None and ray is not None:
            return ray, handle  # the fast path: a call's only overhead over Ray's own
        ray = self._rpc_ray = connect(self._rpc_service, self._rpc_cluster)
        if handle is None:
            try:
                handle = ray.get_actor(self._rpc_service, namespace=self._rpc_namespace)
            except ValueError:
                raise self._rpc_unavailable(
                    f"no Ray actor {self._rpc_where} runs (is its owner running?)"
                ) from None
            self._rpc_handle = handle
        return ray, handle

    def _rpc_error(
        self, ray: Any, exc: BaseException, method: str, timeout_s: float | None
    ) -> BaseException:
        """The error a caller sees for what Ray raised."""
        errors = ray.exceptions
        if isinstance(exc, (errors.GetTimeoutError, asyncio.TimeoutError)):
            return CallTimeout(
                service=self._rpc_service,
                host="ray",
                port=self._rpc_where,
                method=method,
                timeout_s=timeout_s or 0.0,
            )
        if isinstance(exc, errors.RayActorError):
            if isinstance(exc, errors.ActorDiedError):
                self._rpc_handle = None  # its owner may make a new one of the same name
            if self._rpc_closed:
                return ServiceStopped(service=self._rpc_service)
            return self._rpc_unavailable(_first_line(exc))
        if isinstance(exc, errors.RayTaskError):
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                return cause
            return RemoteCallError(
                service=self._rpc_service, method=method, remote_traceback=str(exc)
            )
        return exc

    def _rpc_result(self, method: str, value: Any) -> Any:
        kind = type(value)
        if kind is Raised:
            raise unpack_exception(value.info, service=self._rpc_service, method=method)
        if kind is Refused:
            raise RemoteCallError(
                service=self._rpc_service, method=method, remote_traceback=value.text
            )
        return value

    def _rpc_call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        ray, handle = self._rpc_actor()
        try:
            value = ray.get(self._rpc_submit(handle, method, args, kwargs), timeout=timeout_s)
        except Exception as exc:
            raise self._rpc_error(ray, exc, method, timeout_s) from None
        return self._rpc_result(method, value)

    def _rpc_submit(
        self, handle: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None
    ) -> Any:
        if method in self._rpc_methods:
            try:
                bound = getattr(handle, method)
            except AttributeError:  # an actor made by an older client class
                pass
            else:
                return bound.remote(*args, **(kwargs or {}))
        return handle.rpcgen_call.remote((method, args, kwargs or {}))

    def _rpc_acall(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Awaitable[Any]:
        return self._rpc_await(method, args, kwargs or {}, timeout_s)

    async def _rpc_await(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout_s: float | None
    ) -> Any:
        ray, handle = self._rpc_actor()
        try:
            ref = self._rpc_submit(handle, method, args, kwargs)
            if timeout_s is None:
                value = await ref
            else:
                value = await asyncio.wait_for(ref, timeout_s)
        except Exception as exc:
            raise self._rpc_error(ray, exc, method, timeout_s) from None
        return self._rpc_result(method, value)

    def _rpc_health(
        self,
        timeout_s: float,
        restart_wait_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> tuple[int, Any]:
        """(worker pid, ``health_check_rpc()``'s result); raises as a call does.

        While Ray is restarting the actor, asks again for up to ``restart_wait_s``:
        the restarted actor is the one to judge (a restart of our own on top of
        Ray's would only kill the new worker).
        """
        deadline = clock() + restart_wait_s
        attempt = 0
        while True:
            ray, handle = self._rpc_actor()
            try:
                pid, value = ray.get(handle.rpcgen_health.remote(), timeout=timeout_s)
            except ray.exceptions.ActorUnavailableError as exc:
                remaining = deadline - clock()
                if remaining <= 0:
                    raise self._rpc_error(ray, exc, "health_check_rpc", timeout_s) from None
                attempt += 1
                sleep(
                    min(remaining, backoff_delay(attempt, initial=0.02, multiplier=2, maximum=0.2))
                )
                continue
            except Exception as exc:
                raise self._rpc_error(ray, exc, "health_check_rpc", timeout_s) from None
            return int(pid), self._rpc_result("health_check_rpc", value)

    def _rpc_worker_pid(self, timeout_s: float) -> int:
        """The actor's worker pid (it answers, whatever its health)."""
        ray, handle = self._rpc_actor()
        try:
            pid, _ = ray.get(handle.rpcgen_health.remote(), timeout=timeout_s)
        except Exception as exc:
            raise self._rpc_error(ray, exc, "health_check_rpc", timeout_s) from None
        return int(pid)

    def _rpc_cluster_address(self) -> str | None:
        """The cluster's GCS address, so that a copy unpickled elsewhere joins the same Ray."""
        ray = connect(self._rpc_service, self._rpc_cluster)
        try:
            return str(ray.get_runtime_context().gcs_address)
        except Exception:
            return self._rpc_cluster

    def _rpc_close(self) -> None:
        self._rpc_closed = True
        self._rpc_handle = None


# -- the owner side --------------------------------------------------------------------


def _state_api() -> Any:
    # Ray's GCS tables without the dashboard (its public state API needs the dashboard).
    return importlib.import_module("ray._private.state")


def _job(job_id: str) -> dict[str, Any] | None:
    try:
        for job in _state_api().jobs():
            if job.get("JobID") == job_id:
                return dict(job)
    except Exception:
        return None
    return None


def _actor_row(handle: Any) -> dict[str, Any] | None:
    try:
        row = _state_api().actors(handle._actor_id.hex())
    except Exception:
        return None
    return dict(row) if row else None


def _actor_dead(handle: Any) -> bool:
    return bool((_actor_row(handle) or {}).get("State", "DEAD") == "DEAD")


class RayHost:
    """The owner's side of one service's actor: start, stop, restart, replace a stale one."""

    def __init__(
        self,
        *,
        client: Any,
        options: RayOptions,
        address: str | None,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.service: str = client.service_name
        self.port: int = client.port
        self.client_cls: type[Any] = type(client)
        self.options = options
        self.address = address
        self.log = log
        self.clock = clock
        self.sleep = sleep
        self.owner_pid = os.getpid()
        #: the actor this host created: the only one it ever kills (another program's
        #: actor of the same name is not ours, even after a failed start of ours)
        self.actor: Any = None
        self.methods: tuple[str, ...] = tuple(getattr(client, "rpc_server_methods", ()))
        self.proxy = RayProxy(
            service=self.service,
            namespace=options.namespace,
            address=address,
            methods=self.methods,
        )
        _hosts.add(self)

    @property
    def where(self) -> str:
        return f"Ray actor {self.options.namespace}/{self.service}"

    def _lookup(self, ray: Any) -> Any:
        try:
            return ray.get_actor(self.service, namespace=self.options.namespace)
        except ValueError:
            return None

    def _wait_until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Poll ``condition`` with backoff until it holds (True) or ``timeout_s`` passes."""
        deadline = self.clock() + timeout_s
        attempt = 0
        while not condition():
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            attempt += 1
            pause = backoff_delay(attempt, initial=0.01, multiplier=2, maximum=0.2)
            self.sleep(min(remaining, pause))
        return True

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
        row = _actor_row(handle) or {}
        job_id = str(row.get("JobID", ""))
        job = _job(job_id) if job_id else None
        owner_gone = job is not None and bool(job.get("IsDead"))
        owner = (
            f"pid {job.get('DriverPid')} on {job.get('DriverIPAddress')} (Ray job {job_id})"
            if job
            else "an unknown program"
        )
        if not owner_gone:
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
                _actor_class(ray, self.service, self.methods)
                .options(**options)
                .remote(self.client_cls, self.service, self.port, owner)
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
        deadline = self.clock() + timeout_s
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise StartupTimeout(
                    service=self.service,
                    port=self.port,
                    timeout_s=timeout_s,
                    where=f"{self.where} of service {self.service!r}",
                    detail=self._pending_hint(handle),
                )
            try:
                pid, value = ray.get(handle.rpcgen_health.remote(), timeout=remaining)
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.ActorUnavailableError:
                self.sleep(min(max(remaining, 0.0), 0.05))  # restarting: ask again
                continue
            except ray.exceptions.RayActorError as exc:
                raise StartupError(
                    service=self.service,
                    port=self.port,
                    detail=_startup_detail(exc),
                    where=f"{self.where} of service {self.service!r}",
                ) from None
            if type(value) is Raised:
                raise StartupError(
                    service=self.service,
                    port=self.port,
                    detail=f"health_check_rpc raised {value.info[2]}: {value.info[3]}",
                    where=f"{self.where} of service {self.service!r}",
                )
            if not_pid is not None and pid == not_pid:
                self.sleep(min(max(remaining, 0.0), 0.05))
                continue
            return int(pid)

    def _pending_hint(self, handle: Any) -> str:
        row = _actor_row(handle) or {}
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
        if not self._wait_until(lambda: _actor_dead(handle), timeout_s):
            self.log.warning("%s: %s not dead yet after kill", self.service, self.where)

    def restart(self, timeout_s: float, old_pid: int | None) -> int:
        """Kill our actor so that Ray restarts it; if Ray has given up on it, make a new one."""
        handle = self.actor
        row = _actor_row(handle) if handle is not None else None
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


def list_services(namespace: str | None = None, timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """The rpcgen actors of the connected Ray cluster (all namespaces unless one is given)."""
    import ray  # the caller connected

    found = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name, space = entry["name"], entry["namespace"]
        if namespace is not None and space != namespace:
            continue
        try:
            handle = ray.get_actor(name, namespace=space)
        except ValueError:  # gone meanwhile
            continue
        row = _actor_row(handle) or {}
        if not str(row.get("ActorClassName", "")).startswith(ServiceActor.__name__):
            continue  # not an rpcgen service
        try:
            info = ray.get(handle.rpcgen_info.remote(), timeout=timeout_s)
        except Exception as exc:
            info = {"error": _first_line(exc), "pid": row.get("Pid")}
        found.append(
            {"service": name, "namespace": space, "detached": bool(row.get("IsDetached")), **info}
        )
    return found


def _reachable(address: str, timeout_s: float) -> bool:
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return True  # not host:port (e.g. ray://): let Ray judge
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def cluster_address(explicit: str | None = None) -> str | None:
    """The Ray cluster to look at: ``explicit``, ``$RAY_ADDRESS``, or the one ``ray start``
    recorded on this machine (``/tmp/ray/ray_current_cluster``); None if there is none."""
    if explicit:
        return explicit
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        with open(
            os.path.join(os.environ.get("RAY_TMPDIR", "/tmp/ray"), "ray_current_cluster")
        ) as f:
            recorded = f.read().strip()
    except OSError:
        return None
    return recorded or None


def list_cluster_services(
    address: str | None, timeout_s: float = 2.0
) -> tuple[str | None, list[dict[str, Any]]]:
    """(the cluster's address, its rpcgen services), for ``rpcgen ps``.

    ``(None, [])`` when ray is not installed or no cluster is known; raises
    :class:`ServiceUnavailable` when the known cluster does not answer.
    """
    target = cluster_address(address)
    if target is None or importlib.util.find_spec("ray") is None:
        return None, []  # no cluster known, or no ray: nothing to import ray for
    ray = importlib.import_module("ray")
    if not ray.is_initialized():
        if not _reachable(target, timeout_s):
            raise ServiceUnavailable(
                service="*", host="ray", port=target, reason="the Ray cluster does not answer"
            )
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=target, logging_level=logging.ERROR, log_to_driver=False)
    return target, list_services(timeout_s=timeout_s)
