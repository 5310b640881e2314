"""What a reply means to the caller: its result, or the typed error it raises.

A reply is a pickled ``(kind, value)``: ``#RETURN`` (the result), ``#RAISED``
(the method's exception, rebuilt here as itself), ``#EXPIRED`` (the server got the
call after its deadline and did not run it), ``#UNSERIALIZABLE`` (the result
could not be pickled), ``#STREAM`` (a streaming method's first items), or
``#TRACEBACK``/``#ERROR`` (the server failed outside the method).
"""

from __future__ import annotations

from typing import Any

from .endpoint import Address
from .errors import (
    CallTimeout,
    MessageTooLarge,
    RemoteCallError,
    ResultNotPicklable,
    ServiceStopped,
    ServiceUnavailable,
)
from .oob import SharedReader, loads
from .remote import unpack_exception
from .transport import describe
from .wire import Received

__all__ = ["ReplyErrors", "final_error", "raise_for", "unpickle_reply"]


def raise_for(
    service: str, where: tuple[str, int | str], method: str, kind: str, value: Any
) -> Any:
    """Return a ``#RETURN`` reply's value; raise what any other reply means."""
    error = final_error(service, where, method, kind, value)
    if error is None:
        return value
    try:
        raise error
    finally:
        del error, value  # break the traceback reference cycle


def final_error(
    service: str, where: tuple[str, int | str], method: str, kind: str, value: Any
) -> BaseException | None:
    """The exception a reply stands for; None for a result (or a stream's end)."""
    if kind in ("#RETURN", "#END"):
        return None
    if kind == "#RAISED":
        return unpack_exception(value, service=service, method=method)
    if kind == "#EXPIRED":
        return CallTimeout(
            service=service,
            host=where[0],
            port=where[1],
            method=method,
            timeout_s=0.0,
            not_run=True,
        )
    if kind == "#ERROR" and isinstance(value, BaseException):
        return value
    if kind == "#UNSERIALIZABLE":
        return ResultNotPicklable(service=service, method=method, reason=str(value))
    if kind == "#STREAM":
        return TypeError(
            f"{method}() is a streaming method (it returns a generator): iterate what the "
            "client method returns (`for x in client.m()`, `async for x in client.aio.m()`)"
        )
    return RemoteCallError(service=service, method=method, remote_traceback=str(value))


def unpickle_reply(
    service: str, method: str, reply: Received, shared: SharedReader | None = None
) -> tuple[str, Any]:
    try:
        kind, value = loads(reply, shared)
    except Exception as exc:
        raise RemoteCallError(
            service=service,
            method=method,
            remote_traceback=f"the reply could not be unpickled here: {exc!r}",
        ) from exc
    return kind, value


class ReplyErrors:
    """The typed errors of one service's calls, and what its replies mean: the part of
    a proxy (:class:`~rpcgen.runtime.proxy.RPCProxy`) that only builds errors."""

    _rpc_service: str
    _rpc_address: Address
    _rpc_max_message_bytes: int
    _rpc_closed: bool

    def _rpc_too_large(self, what: str, size: int) -> MessageTooLarge:
        return MessageTooLarge(
            service=self._rpc_service, what=what, size=size, limit=self._rpc_max_message_bytes
        )

    def _rpc_call_timeout(self, method: str, timeout_s: float) -> CallTimeout:
        host, port = describe(self._rpc_address)
        return CallTimeout(
            service=self._rpc_service, host=host, port=port, method=method, timeout_s=timeout_s
        )

    def _rpc_transport_error(self, method: str, exc: BaseException | None) -> Exception:
        """The typed error for a call whose connection failed (``exc``; None: EOF)."""
        if self._rpc_closed:
            return ServiceStopped(service=self._rpc_service)
        host, port = describe(self._rpc_address)
        if exc is None or isinstance(exc, EOFError):
            reason = "connection closed by the server"
        else:
            reason = repr(exc)
        return ServiceUnavailable(
            service=self._rpc_service, host=host, port=port, reason=f"{method}(): {reason}"
        )

    def _rpc_decode(
        self, method: str, reply: bytes | bytearray, shared: SharedReader | None = None
    ) -> Any:
        """The result in a pickled reply, or its exception raised."""
        kind, result = unpickle_reply(self._rpc_service, method, reply, shared)
        if kind == "#RETURN":
            return result
        return self._rpc_result(method, kind, result)

    def _rpc_result(self, method: str, kind: str, result: Any) -> Any:
        """A reply that is not a plain result: raise what it says."""
        return raise_for(self._rpc_service, describe(self._rpc_address), method, kind, result)

    def _rpc_final_error(self, method: str, kind: str, value: Any) -> BaseException | None:
        return final_error(self._rpc_service, describe(self._rpc_address), method, kind, value)
