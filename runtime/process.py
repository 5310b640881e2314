"""Server-process plumbing: ports, readiness, stale-listener cleanup, stopping.

Every wait here polls a condition under a deadline; nothing sleeps a fixed time.
``clock`` and ``sleep`` are injectable so unit tests need no real waiting.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for_objects
from multiprocessing.process import BaseProcess

from .announce import ReadySignal, parse_process_title
from .endpoint import Address, Endpoint
from .errors import PortInUseError, StartupError, StartupTimeout

__all__ = [
    "Listener",
    "ServerProcess",
    "address_in_use",
    "cleanup_stale",
    "cleanup_stale_server",
    "find_listeners",
    "launch",
    "list_servers",
    "port_is_free",
    "stop_process",
    "unix_socket_in_use",
    "wait_address_free",
    "wait_port_free",
    "wait_until_ready",
]

Clock = Callable[[], float]
Sleep = Callable[[float], None]

_POLL_S = 0.005

# One server process started at a time in this process (registries start services from
# several threads). Where filelock >= 4.3 is loaded (`import ray` loads it), its audit hook
# makes a fork raise RuntimeError on Python 3.12+ while another thread is forking.
_START_LOCK = threading.Lock()


def launch(
    target: Callable[..., object], args: tuple[object, ...], *, start_method: str | None, name: str
) -> BaseProcess:
    """Start ``target(*args)`` as a daemon process with ``start_method`` (None: the default).

    ``target`` should be a module-level function so that spawn and forkserver can
    pickle it.
    """
    ctx = multiprocessing.get_context(start_method)
    process: BaseProcess = ctx.Process(target=target, args=args, daemon=True, name=name)  # type: ignore[attr-defined]
    with _START_LOCK:
        process.start()
    return process


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port`` (see :meth:`Endpoint.in_use`)."""
    return not Endpoint((host, port)).in_use()


def wait_port_free(
    host: str,
    port: int,
    *,
    timeout_s: float,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> bool:
    """Poll until the port can be bound; False if the deadline passes first."""
    return wait_address_free((host, port), timeout_s=timeout_s, clock=clock, sleep=sleep)


@dataclass(frozen=True)
class Listener:
    """A process listening on a port, as psutil reports it."""

    pid: int | None
    name: str | None
    cmdline: tuple[str, ...]
    create_time: float | None


def find_listeners(port: int) -> list[Listener]:
    """Processes (other than this one) with a socket in LISTEN state on ``port``."""
    import psutil  # only on the rare path where the port is busy

    me = os.getpid()
    found: dict[int | None, Listener] = {}
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if conn.pid == me or conn.pid in found:
            continue
        name: str | None = None
        cmdline: tuple[str, ...] = ()
        created: float | None = None
        if conn.pid is not None:
            try:
                proc = psutil.Process(conn.pid)
                name, cmdline, created = proc.name(), tuple(proc.cmdline()), proc.create_time()
            except psutil.Error:
                continue  # exited meanwhile
        found[conn.pid] = Listener(conn.pid, name, cmdline, created)
    return list(found.values())


def _gone(pid: int, create_time: float | None) -> bool:
    """The process exited (a zombie counts: it holds no sockets), or the pid was reused."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if create_time is not None and proc.create_time() != create_time:
            return True
        # psutil's wait() on a zombie that is not our child blocks until its
        # timeout, so poll the status instead.
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _same_user(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).uids().real == os.getuid())
    except psutil.Error:
        return True  # gone meanwhile: nothing to kill, nothing to protect


def unix_socket_in_use(path: str) -> bool:
    """True if something accepts connections on the Unix socket ``path``."""
    return Endpoint(path).in_use()


def address_in_use(address: Address) -> bool:
    return Endpoint.of(address).in_use()


def wait_address_free(
    address: Address,
    *,
    timeout_s: float,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> bool:
    """Poll until nothing listens on ``address``; False if the deadline passes first."""
    deadline = clock() + timeout_s
    delay = _POLL_S
    while address_in_use(address):
        if clock() >= deadline:
            return False
        sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


def listens(pid: int, address: Address) -> bool:
    """Whether process ``pid`` is what listens on ``address`` (TCP port, or Unix path)."""
    endpoint = Endpoint.of(address)
    if endpoint.path is not None:
        return any(found.pid == pid for found in find_unix_listeners(endpoint.path))
    return any(found.pid == pid for found in find_listeners(endpoint.port))


def _short(text: str, limit: int = 120) -> str:
    """A process title for a message: setproctitle pads it with spaces; cut it short."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _this_process_listens(endpoint: Endpoint) -> bool:
    import psutil

    try:
        conns = psutil.Process().net_connections(kind="unix" if endpoint.path else "inet")
    except psutil.Error:
        return False
    for conn in conns:
        laddr: object = conn.laddr
        if endpoint.path is not None:
            if laddr == endpoint.path:
                return True
        elif conn.status == psutil.CONN_LISTEN and getattr(laddr, "port", None) == endpoint.port:
            return True
    return False


def find_unix_listeners(path: str) -> list[Listener]:
    """Processes (other than this one) with a Unix socket bound to ``path``."""
    import psutil

    me = os.getpid()
    found: dict[int, Listener] = {}
    for conn in psutil.net_connections(kind="unix"):
        laddr: object = conn.laddr  # a path string for Unix sockets (the stubs say addr)
        if laddr != path or conn.pid in (None, me) or conn.pid in found:
            continue
        try:
            proc = psutil.Process(conn.pid)
            found[conn.pid] = Listener(
                conn.pid, proc.name(), tuple(proc.cmdline()), proc.create_time()
            )
        except psutil.Error:
            continue
    return list(found.values())


def cleanup_stale_server(
    service: str,
    host: str,
    port: int,
    *,
    timeout_s: float = 5.0,
    logger: logging.Logger | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> list[int]:
    """Make ``host:port`` free for ``service``; see :func:`cleanup_stale`."""
    return cleanup_stale(
        service, (host, port), timeout_s=timeout_s, logger=logger, clock=clock, sleep=sleep
    )


def cleanup_stale(
    service: str,
    address: Address,
    *,
    timeout_s: float = 5.0,
    logger: logging.Logger | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> list[int]:
    """Make ``address`` (TCP or Unix socket) free for ``service``; return the stopped pids.

    A listener whose process title marks it as a server of this same service is
    stale if its owner is gone (exited, or a zombie): it gets
    SIGTERM, then SIGKILL after ``timeout_s`` (only if it is still the same
    process, by pid and create time, and belongs to this user). A server of this
    service whose owner is alive is somebody's live server: :class:`PortInUseError`
    naming its owner (``attach()`` shares it). Any other listener raises
    :class:`PortInUseError` too, and nothing is killed. A Unix socket file that
    nobody listens on is removed.
    """
    log = logger or logging.getLogger(f"rpcgen.{service}")
    endpoint = Endpoint.of(address)
    host, port, unix_path = endpoint.host, endpoint.where, endpoint.path
    if not endpoint.in_use():
        endpoint.remove_file()  # left by a server that was killed
        return []
    import psutil

    listeners = find_unix_listeners(unix_path) if unix_path else find_listeners(int(port))
    stopped: list[int] = []
    for listener in listeners:
        title = parse_process_title(list(listener.cmdline))
        if listener.pid is None or title is None or title.service != service:
            raise PortInUseError(
                service=service,
                host=host,
                port=port,
                pid=listener.pid,
                process_name=_short(" ".join(listener.cmdline)) or listener.name,
            )
        pid = listener.pid
        owner = title.owner_pid
        if owner and not _gone(owner, None):  # this process too: another instance's server
            raise PortInUseError(
                service=service,
                host=host,
                port=port,
                pid=pid,
                process_name=listener.name,
                owner_pid=owner,
            )
        if not _same_user(pid):
            raise PortInUseError(
                service=service, host=host, port=port, pid=pid, process_name=listener.name
            )
        log.warning(
            "stopping stale %s server on %s:%s (pid %d, owner pid %d)",
            service,
            host,
            port,
            pid,
            title.owner_pid,
        )
        try:
            proc = psutil.Process(pid)
            if listener.create_time is not None and proc.create_time() != listener.create_time:
                continue  # it exited and the pid was reused
            proc.send_signal(signal.SIGTERM)
            # A SIGSTOPped server cannot act on SIGTERM until continued.
            proc.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied as exc:
            raise PortInUseError(
                service=service, host=host, port=port, pid=pid, process_name=listener.name
            ) from exc
        deadline = clock() + timeout_s
        while not _gone(pid, listener.create_time) and clock() < deadline:
            sleep(_POLL_S)
        if not _gone(pid, listener.create_time):
            log.warning("stale %s server pid %d ignored SIGTERM; sending SIGKILL", service, pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                if listener.create_time is None or proc.create_time() == listener.create_time:
                    proc.kill()
        stopped.append(pid)
    if not wait_address_free(address, timeout_s=timeout_s, clock=clock, sleep=sleep):
        still = find_unix_listeners(unix_path) if unix_path else find_listeners(int(port))
        first = still[0] if still else Listener(None, None, (), None)
        holder, name = first.pid, first.name
        if holder is None and _this_process_listens(endpoint):
            holder, name = os.getpid(), "this process"
        raise PortInUseError(service=service, host=host, port=port, pid=holder, process_name=name)
    endpoint.remove_file()  # wait_address_free just saw nobody listen
    return stopped


def wait_until_ready(
    process: BaseProcess,
    ready: ReadySignal,
    *,
    service: str,
    port: int,
    timeout_s: float,
    clock: Clock = time.monotonic,
) -> None:
    """Block until the child signals readiness.

    Waits on the ready pipe and the process sentinel together, so a child that
    dies during startup raises :class:`StartupError` at once, with its exit code
    and, when it reported one, its exception text. On timeout the child is
    terminated and reaped, then :class:`StartupTimeout` is raised.
    """
    deadline = clock() + timeout_s
    while True:
        outcome = ready.poll_outcome()
        if outcome is not None:
            if outcome[0] == "ready":
                return
            process.join(timeout_s)
            raise StartupError(
                service=service, port=port, exitcode=process.exitcode, detail=outcome[1]
            )
        if process.exitcode is not None:
            raise StartupError(service=service, port=port, exitcode=process.exitcode)
        remaining = deadline - clock()
        if remaining <= 0:
            stop_process(process, join_timeout_s=1.0)
            raise StartupTimeout(service=service, port=port, timeout_s=timeout_s)
        wait_for_objects([ready.reader, process.sentinel], timeout=remaining)


def stop_process(
    process: BaseProcess,
    *,
    join_timeout_s: float = 2.0,
    graceful: Callable[[], None] | None = None,
    logger: logging.Logger | None = None,
) -> int | None:
    """Stop a child: graceful request, join, terminate, join, kill. Returns the exit code.

    Must be called from the process that started ``process``.
    """
    log = logger or logging.getLogger("rpcgen")
    if process.exitcode is None and graceful is not None:
        try:
            graceful()
        except Exception as exc:  # the server may already be gone
            log.debug("graceful stop request failed: %r", exc)
        process.join(join_timeout_s)
    if process.exitcode is None:
        process.terminate()
        process.join(join_timeout_s)
    if process.exitcode is None:
        log.warning("server pid %s ignored SIGTERM; killing it", process.pid)
        process.kill()
        process.join()
    return process.exitcode


@dataclass(frozen=True)
class ServerProcess:
    """A running rpcgen server, found by its process-title marker."""

    service: str
    pid: int
    port: int
    parent_pid: int
    owner_pid: int
    owner_alive: bool
    uptime_s: float
    rss_bytes: int
    #: its start generation in the service directory (None: not published there)
    generation: int | None = None
    #: who runs it: another user's server is not ours to attach to, stop or clean up
    user: str = ""
    uid: int = -1

    @property
    def mine(self) -> bool:
        return self.uid == os.getuid()

    def as_dict(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "user": self.user,
            "uid": self.uid,
            "mine": self.mine,
            "service": self.service,
            "pid": self.pid,
            "port": self.port,
            "parent_pid": self.parent_pid,
            "owner_pid": self.owner_pid,
            "owner_alive": self.owner_alive,
            "uptime_s": round(self.uptime_s, 3),
            "rss_bytes": self.rss_bytes,
        }


def list_servers(clock: Callable[[], float] = time.time) -> list[ServerProcess]:
    """Every rpcgen server process on this machine (that we may inspect), by service and port.

    Found by process title, any user's (any process may set any title: ``mine`` says
    whether it runs as this user); the service directory adds each one's start generation.
    """
    import psutil

    from .directory import entries

    try:
        published = {e.pid: e for e in entries()}
    except OSError:
        published = {}
    found: list[ServerProcess] = []
    now = clock()
    wanted = ["pid", "ppid", "cmdline", "create_time", "memory_info", "uids", "username"]
    for proc in psutil.process_iter(wanted):
        info = proc.info
        title = parse_process_title(info.get("cmdline") or [])
        if title is None or proc.pid == os.getpid():
            continue
        memory = info.get("memory_info")
        try:
            owner_alive = bool(title.owner_pid) and psutil.pid_exists(title.owner_pid)
        except (OverflowError, ValueError, psutil.Error):
            continue  # a title that only looks like ours
        uid = info["uids"].real if info.get("uids") is not None else -1
        entry = published.get(proc.pid) if uid == os.getuid() else None
        found.append(
            ServerProcess(
                service=title.service,
                pid=proc.pid,
                port=title.port,
                parent_pid=info.get("ppid") or 0,
                owner_pid=title.owner_pid,
                owner_alive=owner_alive,
                uptime_s=max(0.0, now - (info.get("create_time") or now)),
                rss_bytes=memory.rss if memory is not None else 0,
                generation=entry.generation if entry is not None else None,
                user=info.get("username") or "?",
                uid=uid,
            )
        )
    return sorted(found, key=lambda s: (s.service, s.port, s.pid))
