"""Errors raised by :mod:`rpcgen.runtime`.

Every error is a :class:`ServiceError` and also subclasses the stdlib class that
callers' existing ``except`` clauses already catch::

    ServiceError
    ├── ServiceUnavailable (ConnectionError)      server cannot be reached
    │   └── CallTimeout (TimeoutError)            no reply within the call's timeout
    ├── ServiceAuthenticationError (multiprocessing.AuthenticationError)
    ├── RemoteCallError (RuntimeError)            server failed outside the method; remote traceback
    ├── StartupError (RuntimeError)               server process died before it was ready
    ├── StartupTimeout (TimeoutError)             server process never became ready
    ├── PortInUseError (OSError)                  a foreign process listens on the port
    ├── ServiceStopped (RuntimeError)             used after shutdown()
    └── NotPicklableError (TypeError)             direct-mode client pickled

The raw errors of :mod:`multiprocessing.managers` (``ConnectionRefusedError``,
``EOFError``, ``AuthenticationError``, ``RemoteError``) reach users only wrapped in
these types. An exception raised *by the server method itself* is re-raised as
its own type, as with a plain BaseManager proxy.
"""

from __future__ import annotations

from multiprocessing import AuthenticationError

__all__ = [
    "CallTimeout",
    "NotPicklableError",
    "PortInUseError",
    "RemoteCallError",
    "ServiceAuthenticationError",
    "ServiceError",
    "ServiceStopped",
    "ServiceUnavailable",
    "StartupError",
    "StartupTimeout",
]


def _where(service: str, host: str, port: int | str) -> str:
    return f"service {service!r} at {host}:{port}"


class ServiceError(Exception):
    """Root of every error raised by rpcgen.runtime."""


class ServiceUnavailable(ConnectionError, ServiceError):
    """The server cannot be reached (refused, closed, or died mid-call)."""

    def __init__(self, *, service: str, host: str, port: int | str, reason: str) -> None:
        self.service, self.host, self.port, self.reason = service, host, port, reason
        super().__init__(
            f"{_where(service, host, port)} is unavailable: {reason}; "
            "check that the server is running (rpcgen ps) or restart the service"
        )


class CallTimeout(TimeoutError, ServiceUnavailable):
    """A call got no reply within its timeout; its connection was discarded."""

    def __init__(
        self, *, service: str, host: str, port: int | str, method: str, timeout_s: float
    ) -> None:
        self.method, self.timeout_s = method, timeout_s
        ServiceUnavailable.__init__(
            self,
            service=service,
            host=host,
            port=port,
            reason=f"{method}() got no reply within {timeout_s:g}s",
        )


class ServiceAuthenticationError(AuthenticationError, ServiceError):
    """The server rejected the authkey, or the peer is not an rpcgen server."""

    def __init__(self, *, service: str, host: str, port: int | str) -> None:
        self.service, self.host, self.port = service, host, port
        super().__init__(
            f"{_where(service, host, port)} rejected the authkey; another process may "
            "own the port, or the client holds the key of an earlier server start"
        )


class RemoteCallError(RuntimeError, ServiceError):
    """The server failed to run or answer a call; carries the remote traceback."""

    def __init__(self, *, service: str, method: str, remote_traceback: str) -> None:
        self.service, self.method, self.remote_traceback = service, method, remote_traceback
        super().__init__(
            f"service {service!r} failed in {method}(); remote traceback:\n{remote_traceback}"
        )


class StartupError(RuntimeError, ServiceError):
    """The server process died (or reported an error) before it was ready."""

    def __init__(
        self,
        *,
        service: str,
        port: int | str,
        exitcode: int | None = None,
        detail: str | None = None,
    ) -> None:
        self.service, self.port, self.exitcode, self.detail = service, port, exitcode, detail
        what = f"exited with code {exitcode}" if exitcode is not None else "failed"
        tail = f": {detail}" if detail else "; see the server's stderr for its traceback"
        super().__init__(
            f"server process of service {service!r} (port {port}) {what} before it was ready{tail}"
        )


class StartupTimeout(TimeoutError, ServiceError):
    """The server process did not signal readiness in time; it was terminated."""

    def __init__(self, *, service: str, port: int | str, timeout_s: float) -> None:
        self.service, self.port, self.timeout_s = service, port, timeout_s
        super().__init__(
            f"server process of service {service!r} (port {port}) was not ready within "
            f"{timeout_s:g}s and was terminated; raise start_timeout_s if its setup is slow"
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
    ) -> None:
        self.service, self.host, self.port = service, host, port
        self.pid, self.process_name = pid, process_name
        owner = f"pid {pid} ({process_name})" if pid is not None else "an unknown process"
        where = f"socket {port}" if host == "unix" else f"port {port} on {host}"
        super().__init__(
            f"{where} for service {service!r} is held by {owner}, which is not "
            "a server of this service, so it was not touched; stop it or choose another port"
        )

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
