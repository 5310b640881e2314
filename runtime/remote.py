"""How a server method's exception crosses to the client, with its traceback.

The server sends a :data:`RaisedInfo`: plain strings and bytes only, so the reply
itself always unpickles. The exception travels pickled *inside* it, and when it
cannot be unpickled here (its ``__init__`` needs arguments that ``pickle`` does
not pass, or its class is missing), the client rebuilds the same class without
calling ``__init__`` (as :mod:`copy` does), from its ``args`` and ``__dict__``.
Only when even that fails does it raise :class:`RemoteCallError`, which keeps
the type's name, the message and the traceback.

Either way the server's traceback is chained as the exception's ``__cause__``
(a :class:`RemoteTraceback`), the way :mod:`concurrent.futures` does it.

Only classes of modules this process has already imported are used: a server's
exception never makes a client import a module (a module runs code as it is
imported). An exception of any other class arrives as :class:`RemoteCallError`.
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
from typing import Any

from .errors import RemoteCallError, RemoteTraceback

__all__ = ["RaisedInfo", "pack_exception", "unpack_exception"]

#: (exception pickled or None, module, qualname, str(exc), args pickled or None,
#: __dict__ pickled or None, formatted traceback)
RaisedInfo = tuple[bytes | None, str, str, str, bytes | None, bytes | None, str]

_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _dumps_or_none(value: Any) -> bytes | None:
    try:
        return pickle.dumps(value, _PROTOCOL)
    except Exception:
        return None


def pack_exception(exc: BaseException) -> RaisedInfo:
    """Describe ``exc`` (being handled on the server) for the client."""
    cls = type(exc)
    text = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    return (
        _dumps_or_none(exc),
        cls.__module__,
        cls.__qualname__,
        message,
        _dumps_or_none(exc.args),
        _dumps_or_none(dict(vars(exc))) if vars(exc) else None,
        text,
    )


class _ImportedOnly(pickle.Unpickler):
    """Unpickles only what modules already imported here define; imports nothing."""

    def find_class(self, module: str, name: str) -> Any:
        if module not in sys.modules:
            raise pickle.UnpicklingError(f"module {module!r} is not imported in this process")
        return super().find_class(module, name)


def _load(blob: bytes | None) -> Any:
    return _ImportedOnly(io.BytesIO(blob)).load() if blob is not None else None


def _rebuild(module: str, qualname: str, args_blob: bytes | None, state_blob: bytes | None) -> Any:
    """The same class, made without ``__init__``; None if that is not possible here."""
    try:
        owner: Any = sys.modules.get(module)
        if owner is None:
            return None  # never imported here: importing it would run its code
        for part in qualname.split("."):
            owner = getattr(owner, part)
        if not (isinstance(owner, type) and issubclass(owner, BaseException)):
            return None
        exc = owner.__new__(owner)
        args = _load(args_blob)
        if isinstance(args, tuple):
            exc.args = args
        state = _load(state_blob)
        if isinstance(state, dict):
            exc.__dict__.update(state)
        return exc
    except Exception:
        return None


def unpack_exception(info: RaisedInfo, *, service: str, method: str) -> BaseException:
    """The exception to raise in the client, its remote traceback chained as its cause."""
    blob, module, qualname, message, args_blob, state_blob, text = info
    exc: BaseException | None = None
    if blob is not None:
        try:
            loaded = _load(blob)
        except Exception:
            loaded = None
        if isinstance(loaded, BaseException):
            exc = loaded
    if exc is None:
        exc = _rebuild(module, qualname, args_blob, state_blob)
    if exc is None:
        name = qualname if module == "builtins" else f"{module}.{qualname}"
        exc = RemoteCallError(
            service=service,
            method=method,
            remote_traceback=text,
            error_type=name,
            error_message=message,
        )
    exc.__cause__ = RemoteTraceback(remote_traceback=text)
    return exc
