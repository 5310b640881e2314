"""What a reply means to the caller: its result, or the typed error it raises.

A reply is a pickled ``(kind, value)``: ``#RETURN`` (the result), ``#RAISED``
(the method's exception, rebuilt here as itself), ``#EXPIRED`` (the server got the
call after its deadline and did not run it), ``#UNSERIALIZABLE`` (the result
could not be pickled), ``#STREAM`` (a streaming method's first items), or
``#TRACEBACK``/``#ERROR`` (the server failed outside the method).
"""

from __future__ import annotations

from typing import Any

from .errors import CallTimeout, RemoteCallError, ResultNotPicklable
from .oob import loads
from .remote import unpack_exception
from .wire import Received

__all__ = ["final_error", "raise_for"]


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


def unpickle_reply(service: str, method: str, reply: Received) -> tuple[str, Any]:
    try:
        kind, value = loads(reply)
    except Exception as exc:
        raise RemoteCallError(
            service=service,
            method=method,
            remote_traceback=f"the reply could not be unpickled here: {exc!r}",
        ) from exc
    return kind, value
