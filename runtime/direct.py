"""Direct mode with RPC semantics: every argument, result and error goes through pickle.

In direct mode (``running_unit_tests=True``) the client calls the server object
in-process. That hides what would fail over RPC: an unpicklable argument or
result (a generator, a lock, a lambda), a private method, or a result the test
mutates in place. :class:`PicklingProxy` makes direct mode fail the same way.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from .remote import pack_exception, unpack_exception

__all__ = ["PicklingProxy"]


def _roundtrip(value: Any, what: str, method: str) -> Any:
    try:
        return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        raise TypeError(
            f"{what} of {method}() cannot cross a process boundary (pickle failed: {exc}); "
            "it would fail over RPC too"
        ) from exc


class PicklingProxy:
    """Wraps a server object; calls behave as they would through an RPC proxy."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __repr__(self) -> str:
        return f"<PicklingProxy of {type(self._obj).__name__}>"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            # Over RPC only public methods are exposed.
            raise AttributeError(
                f"{name!r} is not exposed over RPC (names starting with '_' never are)"
            )
        target = getattr(self._obj, name)
        if not callable(target):
            raise AttributeError(
                f"{name!r} is an attribute, not a method; RPC exposes methods only"
            )

        def method(*args: Any, **kwargs: Any) -> Any:
            call_args, call_kwargs = _roundtrip((args, kwargs), "an argument", name)
            try:
                result = target(*call_args, **call_kwargs)
            except Exception as exc:
                # Exactly what the client gets over RPC: the exception as it arrives
                # there, with the server-side traceback chained as its cause.
                info = pickle.loads(pickle.dumps(pack_exception(exc)))
                error = unpack_exception(info, service=type(self._obj).__name__, method=name)
                try:
                    raise error from error.__cause__
                finally:
                    del error
            return _roundtrip(result, "the result", name)

        method.__name__ = name
        return method
