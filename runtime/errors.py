"""Errors raised by :mod:`rpcgen.runtime`.

Every error is a :class:`ServiceError` and also subclasses the stdlib class that
callers' existing ``except`` clauses already catch::

    ServiceError
    ├── ServiceUnavailable (ConnectionError)      server cannot be reached
    │   ├── CallTimeout (TimeoutError)            no reply within the call's timeout
    │   └── ServiceNotFound                       attach(): no such service runs here, or
    │                                             several do and no port= chose one
    ├── ServiceAuthenticationError (multiprocessing.AuthenticationError)
    │   └── ServiceTLSError                       TLS setup failed: the server's certificate
    │                                             is not the trusted one, or one side has
    │                                             no TLS
    ├── KeyFileError (PermissionError)            a key file that is not safe or not a key
    ├── RemoteCallError (RuntimeError)            server failed outside the method, or its
    │   │                                         exception cannot be rebuilt here
    │   └── ResultNotPicklable (TypeError)        the method's result cannot be pickled
    ├── RemoteTraceback                           the server-side traceback, set as the
    │                                             ``__cause__`` of a server method's exception
    ├── StartupError (RuntimeError)               server process died before it was ready
    ├── StartupTimeout (TimeoutError)             server process never became ready
    ├── PortInUseError (OSError)                  a foreign process, or a live server of
    │                                             the same service with a live owner, holds
    │                                             the port
    ├── UnsafeBindError (ValueError)              a network address without an authkey file
    ├── ServiceStopped (RuntimeError)             used after shutdown()
    ├── NotPicklableError (TypeError)             direct-mode client pickled
    ├── ServiceAlreadyRunning (RuntimeError)      backend="ray": a live actor of that name
    │                                             has a live owner
    ├── BackendNotInstalled (ImportError)         backend="ray" without ray installed
    ├── MessageTooLarge (ValueError)              a request or reply over max_message_bytes
    ├── StockServerFound                          the server speaks multiprocessing's stock
    │                                             handshake (it built its own BaseManager)
    └── ServiceStartError (RuntimeError)          a registry's service failed to start; the
                                                  ones already started were shut down

The raw errors of :mod:`multiprocessing.managers` (``ConnectionRefusedError``,
``EOFError``, ``AuthenticationError``, ``RemoteError``) reach users only wrapped in
these types. An exception raised *by the server method itself* is re-raised as
its own type, as with a plain BaseManager proxy, with the server's traceback
chained as its cause (as :mod:`concurrent.futures` does).

Every error here survives pickling (servers raise them too, and direct mode with
``direct_mode_pickle=True`` pickles every exception): the constructors take
keyword-only arguments, so unpickling restores the instance's state instead of
calling ``__init__`` again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from multiprocessing import AuthenticationError
from typing import Any

__all__ = [
    "BackendNotInstalled",
    "CallTimeout",
    "KeyFileError",
    "MessageTooLarge",
    "NotPicklableError",
    "PortInUseError",
    "RemoteCallError",
    "RemoteTraceback",
    "ResultNotPicklable",
    "ServiceAlreadyRunning",
    "ServiceAuthenticationError",
    "ServiceError",
    "ServiceNotFound",
    "ServiceStartError",
    "ServiceStopped",
    "ServiceTLSError",
    "ServiceUnavailable",
    "StartupError",
    "StartupTimeout",
    "StockServerFound",
    "UnsafeBindError",
]


def _where(service: str, host: str, port: int | str) -> str:
    return f"service {service!r} at {host}:{port}"


def _restore(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def reduce_by_state(self: BaseException) -> tuple[Any, ...]:
    """``__reduce__`` for errors with keyword-only constructors: rebuild without ``__init__``."""
    return (_restore, (type(self), self.args, dict(self.__dict__)))


class PicklesByState(Exception):
    """Base of an error tree whose classes all survive pickling (rpcgen's two roots)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Set on every subclass: a stdlib base earlier in the MRO (OSError) has its own.
        cls.__reduce__ = reduce_by_state  # type: ignore[assignment,method-assign]

    __reduce__ = reduce_by_state


class ServiceError(PicklesByState):
    """Root of every error raised by rpcgen.runtime."""


class ServiceUnavailable(ConnectionError, ServiceError):
    """The server cannot be reached (refused, closed, or died mid-call)."""

    def __init__(self, *, service: str, host: str, port: int | str, reason: str) -> None:
        self.service, self.host, self.port, self.reason = service, host, port, reason
        super().__init__(
            f"{_where(service, host, port)} is unavailable: {reason}; "
            "check that the server is running (rpcgen ps); a restart under way (its owner "
            "restarts a failed server by itself) ends within start_timeout_s"
        )


class CallTimeout(TimeoutError, ServiceUnavailable):
    """A call got no reply within its timeout; its connection was discarded."""

    def __init__(
        self,
        *,
        service: str,
        host: str,
        port: int | str,
        method: str,
        timeout_s: float,
        not_run: bool = False,
    ) -> None:
        self.method, self.timeout_s = method, timeout_s
        #: True: the server got the call after its deadline and did not run it
        self.not_run = not_run
        ServiceUnavailable.__init__(
            self,
            service=service,
            host=host,
            port=port,
            reason=(
                f"{method}() waited on the server past its deadline and was not run"
                if not_run
                else f"{method}() got no reply within {timeout_s:g}s"
            ),
        )


class ServiceNotFound(ServiceUnavailable):
    """``attach()`` found no running service by that port or name on this host."""

    def __init__(
        self,
        *,
        service: str | None,
        port: int | None,
        timeout_s: float,
        why: str | None = None,
        found: Sequence[tuple[int, int]] = (),
    ) -> None:
        self.timeout_s = timeout_s
        #: (port, owner pid) of each live service of that name, when more than one runs
        self.found = tuple(found)
        if why is not None:  # found nothing without looking: say why (e.g. no Ray cluster)
            ServiceUnavailable.__init__(
                self, service=service or "?", host="ray", port="?", reason=why
            )
            return
        if len(self.found) > 1:
            which = "; ".join(f"port {p} (owner pid {o})" for p, o in self.found)
            ServiceUnavailable.__init__(
                self,
                service=service or "?",
                host="localhost",
                port="?",
                reason=f"{len(self.found)} services named {service!r} run here: {which}; "
                "pass port= to choose one",
            )
            return
        what = " ".join(
            part
            for part in (
                f"named {service!r}" if service else "",
                f"on port {port}" if port is not None else "",
            )
            if part
        )
        ServiceUnavailable.__init__(
            self,
            service=service or "?",
            host="localhost",
            port=port if port is not None else "?",
            reason=f"no running service {what} was found within {timeout_s:g}s "
            "(start its owner first; `rpcgen ps` lists what runs)",
        )

    def __str__(self) -> str:
        return str(self.reason)


class ServiceAuthenticationError(AuthenticationError, ServiceError):
    """The peer could not prove that it holds the service's key (the server proves
    first), or the server refused this client's key."""

    def __init__(self, *, service: str, host: str, port: int | str) -> None:
        self.service, self.host, self.port = service, host, port
        super().__init__(
            f"{_where(service, host, port)} did not prove that it holds the service's key, "
            "so nothing was sent to it: another program may own the port, a relay may "
            "stand in between, or this client holds the key of an earlier server start"
        )


class ServiceTLSError(ServiceAuthenticationError):
    """TLS could not be set up with the server, so nothing of this client's was sent."""

    def __init__(self, *, service: str, host: str, port: int | str, reason: str) -> None:
        self.service, self.host, self.port, self.reason = service, host, port, reason
        hint = (
            "the server's certificate is not the one this client trusts: with the default "
            "(no ssl_context) the server holds a different key, or another program owns the "
            "port; with ssl_context, check its CA and the server's certificate"
            if "certificate" in reason or "verify" in reason
            else "both sides need the same tls= setting (a server started with "
            "tls='insecure-plaintext', or an older rpcgen, does not speak TLS)"
        )
        AuthenticationError.__init__(
            self, f"{_where(service, host, port)}: TLS setup failed ({reason}); {hint}"
        )


class StockServerFound(ServiceError):
    """The server speaks multiprocessing's stock handshake (it built its own BaseManager).

    Its owner then talks to it the stock way (:mod:`rpcgen.runtime.stock`); anyone else
    gets this error: such a server cannot prove itself first.
    """

    def __init__(self, *, service: str, host: str, port: int | str) -> None:
        self.service, self.host, self.port = service, host, port
        super().__init__(
            f"{_where(service, host, port)} speaks multiprocessing's stock handshake (its "
            "server builds its own BaseManager): only the owner that started it connects to "
            "it; serve it with serve_rpc (or _serve_rpc) to attach to it or share it"
        )


class RemoteCallError(RuntimeError, ServiceError):
    """The server failed to run or answer a call, or its exception cannot be rebuilt here.

    ``error_type`` and ``error_message`` name the server's exception when there was one.
    """

    def __init__(
        self,
        *,
        service: str,
        method: str,
        remote_traceback: str,
        error_type: str | None = None,
        error_message: str | None = None,
    ) -> None:
        self.service, self.method, self.remote_traceback = service, method, remote_traceback
        self.error_type, self.error_message = error_type, error_message
        if error_type is None:
            head = f"service {service!r} failed in {method}()"
        else:
            head = (
                f"service {service!r}: {method}() raised {error_type}: {error_message}, which "
                "cannot be rebuilt in this process (its class is missing here, or it cannot "
                "be unpickled)"
            )
        super().__init__(f"{head}; remote traceback:\n{remote_traceback}")


class ResultNotPicklable(RemoteCallError, TypeError):
    """A server method returned something pickle cannot send (a generator, a lock, a
    lambda): one line, as direct mode says it."""

    def __init__(self, *, service: str, method: str, reason: str) -> None:
        RemoteCallError.__init__(self, service=service, method=method, remote_traceback=reason)
        self.reason = reason
        self.args = (
            f"service {service!r}: the result of {method}() cannot cross a process boundary "
            f"(pickle failed on the server: {reason}); return plain data, e.g. a list "
            "instead of a generator",
        )


class RemoteTraceback(ServiceError):
    """The server-side traceback of a server method's exception, chained as its cause."""

    def __init__(self, *, remote_traceback: str) -> None:
        self.remote_traceback = remote_traceback
        super().__init__(remote_traceback)

    def __str__(self) -> str:
        return f'\n"""\n{self.remote_traceback.rstrip()}\n"""'


class StartupError(RuntimeError, ServiceError):
    """The server process died (or reported an error) before it was ready."""

    def __init__(
        self,
        *,
        service: str,
        port: int | str,
        exitcode: int | None = None,
        detail: str | None = None,
        where: str | None = None,
    ) -> None:
        self.service, self.port, self.exitcode, self.detail = service, port, exitcode, detail
        self.where = where
        what = f"exited with code {exitcode}" if exitcode is not None else "failed"
        tail = f": {detail}" if detail else "; see the server's stderr for its traceback"
        subject = where or f"server process of service {service!r} (port {port})"
        super().__init__(f"{subject} {what} before it was ready{tail}")


class StartupTimeout(TimeoutError, ServiceError):
    """The server process did not signal readiness in time; it was terminated."""

    def __init__(
        self,
        *,
        service: str,
        port: int | str,
        timeout_s: float,
        where: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.service, self.port, self.timeout_s = service, port, timeout_s
        self.where, self.detail = where, detail
        subject = where or f"server process of service {service!r} (port {port})"
        hint = detail or "raise start_timeout_s if its setup is slow"
        super().__init__(
            f"{subject} was not ready within {timeout_s:g}s and was terminated; {hint}"
        )


class PortInUseError(OSError, ServiceError):
    """Another (non-rpcgen, or other-service) process listens on the port."""

    def __init__(
        self,
        *,
        service: str,
        host: str,
        port: int | str,
        pid: int | None,
        process_name: str | None,
        owner_pid: int | None = None,
    ) -> None:
        self.service, self.host, self.port = service, host, port
        self.pid, self.process_name, self.owner_pid = pid, process_name, owner_pid
        owner = f"pid {pid} ({process_name})" if pid is not None else "an unknown process"
        where = f"socket {port}" if host == "unix" else f"port {port} on {host}"
        if owner_pid is not None:
            message = (
                f"{where} for service {service!r} is held by a live server of this service "
                f"(pid {pid}) owned by the running process {owner_pid}, so it was not touched; "
                f"use {service}.attach(port={port}) to share it, or choose another port"
            )
        else:
            message = (
                f"{where} for service {service!r} is held by {owner}, which is not "
                "a server of this service, so it was not touched; stop it or choose another port"
            )
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


class ServiceStopped(RuntimeError, ServiceError):
    """The client was used after shutdown()."""

    def __init__(self, *, service: str) -> None:
        self.service = service
        super().__init__(
            f"service {service!r} has been shut down; create a new client to use it again"
        )


class NotPicklableError(TypeError, ServiceError):
    """A direct-mode client cannot be sent to another process."""

    def __init__(self, *, service: str) -> None:
        self.service = service
        super().__init__(
            f"service {service!r} runs in direct mode (running_unit_tests=True), so its server "
            "object lives in this process and cannot be pickled; use RPC mode to share it"
        )


class UnsafeBindError(ValueError, ServiceError):
    """A server would listen on a network address with no authkey file to share the key."""

    def __init__(self, *, service: str, host: str) -> None:
        self.service, self.host = service, host
        super().__init__(
            f"service {service!r}: host={host!r} exposes a pickle endpoint (code execution for "
            "anyone with the key) to the network; pass authkey_file=PATH (a 0600 file, created "
            "with a fresh key if missing) so that clients on other hosts share a key you "
            "control, or keep the default host 127.0.0.1"
        )


class ServiceAlreadyRunning(RuntimeError, ServiceError):
    """backend="ray": an actor of the service's name runs, and its owner is alive (or
    it cannot be told to be gone), so it was not touched."""

    def __init__(self, *, service: str, where: str, owner: str) -> None:
        self.service, self.where, self.owner = service, where, owner
        super().__init__(
            f"service {service!r} already runs as {where}, owned by {owner}, so it was not "
            f"touched; use {service}.attach() to share it, or stop it first"
        )


class BackendNotInstalled(ImportError, ServiceError):
    """The service's backend needs a package that is not installed."""

    def __init__(self, *, service: str, backend: str, extra: str) -> None:
        self.service, self.backend, self.extra = service, backend, extra
        super().__init__(
            f"service {service!r} uses backend={backend!r}, but {backend} is not installed: "
            f"pip install 'rpcgen[{extra}]'"
        )


class ServiceStartError(RuntimeError, ServiceError):
    """A service of a registry failed to start; those already started were shut down."""

    def __init__(self, *, service: str, cause: BaseException, stopped: Sequence[str]) -> None:
        self.service, self.cause, self.stopped = service, cause, list(stopped)
        undone = f"; shut down again: {', '.join(self.stopped)}" if self.stopped else ""
        super().__init__(f"service {service!r} failed to start: {cause}{undone}")


class MessageTooLarge(ValueError, ServiceError):
    """A request or reply is larger than ``max_message_bytes`` (checked before any of it
    is sent or buffered). A reply that is too large closes its connection."""

    def __init__(self, *, service: str, what: str, size: int, limit: int) -> None:
        self.service, self.what, self.size, self.limit = service, what, size, limit
        super().__init__(
            f"service {service!r}: a {what} of {size} bytes is over the limit of {limit} "
            "bytes; pass a larger max_message_bytes to both the client and serve_rpc"
        )


class KeyFileError(PermissionError, ServiceError):
    """A key file was refused: not a regular file of this user, readable by others, or
    not a key (see :mod:`rpcgen.runtime.keyfile`)."""

    def __init__(self, *, path: str | os.PathLike[str], problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = os.fspath(path), problem, fix
        super().__init__(f"authkey file {self.path}: {problem}; {fix}")
