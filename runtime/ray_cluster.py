"""The Ray cluster: connecting to it, and listing the rpcgen services it runs.

Imported only for ``backend="ray"`` and by ``rpcgen ps``; ray itself is imported
on first use, and a missing ray is one line: ``pip install 'rpcgen[ray]'``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.util
import logging
import os
import socket
import stat
import sys
import threading
import weakref
from typing import Any, Protocol

from .errors import BackendNotInstalled, ServiceUnavailable
from .ray_actor import ServiceActor

__all__ = [
    "actor_dead",
    "actor_row",
    "cluster_address",
    "connect",
    "find_job",
    "first_line",
    "import_ray",
    "list_cluster_services",
    "list_services",
    "stop_at_exit",
    "worker_runtime_env",
]

_connect_lock = threading.Lock()
#: owners' hosts, stopped at exit before Ray disconnects (see :func:`stop_at_exit`)
_hosts: weakref.WeakSet[Any] = weakref.WeakSet()
_exit_hook_registered = False


class _Stoppable(Protocol):
    owner_pid: int

    def stop(self) -> None: ...


def stop_at_exit(host: _Stoppable) -> None:
    """Stop ``host`` (its actor) when this program exits, if this process still owns it."""
    _hosts.add(host)


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
                    reason=f"ray.init() failed: {type(exc).__name__}: {first_line(exc)}",
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _state_api() -> Any:
    # Ray's GCS tables without the dashboard (its public state API needs the dashboard).
    return importlib.import_module("ray._private.state")


def find_job(job_id: str) -> dict[str, Any] | None:
    try:
        for job in _state_api().jobs():
            if job.get("JobID") == job_id:
                return dict(job)
    except Exception:
        return None
    return None


def actor_row(handle: Any) -> dict[str, Any] | None:
    try:
        row = _state_api().actors(handle._actor_id.hex())
    except Exception:
        return None
    return dict(row) if row else None


def actor_dead(handle: Any) -> bool:
    return bool((actor_row(handle) or {}).get("State", "DEAD") == "DEAD")


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
        row = actor_row(handle) or {}
        if not str(row.get("ActorClassName", "")).startswith(ServiceActor.__name__):
            continue  # not an rpcgen service
        try:
            info = ray.get(handle.rpcgen_info.remote(), timeout=timeout_s)
        except Exception as exc:
            info = {"error": first_line(exc), "pid": row.get("Pid")}
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
    recorded on this machine (``$RAY_TMPDIR/ray_current_cluster``, default ``/tmp/ray``);
    None if there is none.

    The recorded file is used only if this user owns it: ``/tmp/ray`` is world-writable, so
    anyone could point this user's ``rpcgen ps`` at a cluster of theirs.
    """
    if explicit:
        return explicit
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    path = os.path.join(os.environ.get("RAY_TMPDIR", "/tmp/ray"), "ray_current_cluster")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # none, or a symlink
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            logging.getLogger("rpcgen").warning(
                "ignoring %s: not a regular file of this user (owner uid %d)", path, info.st_uid
            )
            return None
        recorded = os.read(fd, 4096).decode(errors="replace").strip()
    finally:
        os.close(fd)
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
        # Ray's C++ side logs each failed attempt to join (e.g. 20 lines of InvalidAuthToken);
        # the one warning that matters is ours, below.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        try:
            ray.init(address=target, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:
            raise ServiceUnavailable(
                service="*",
                host="ray",
                port=target,
                reason=f"could not join the Ray cluster ({type(exc).__name__}: "
                f"{first_line(exc)}); with Ray's token authentication (its default) set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to a copy of the cluster's token",
            ) from exc
    return target, list_services(timeout_s=timeout_s)
