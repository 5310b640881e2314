"""A call's deadline and cancellation, on both sides, and which methods are safe to repeat.

Client side: ``with deadline(2.0): client.method()`` bounds every call made in the
block (nested blocks keep the earliest end; a client's ``call_timeout_s`` applies
where no block does). The time left travels with each request.

Server side: :func:`current_call` describes the call a server method runs for: its
time left, and whether its caller cancelled it. A server method's own calls to
other services inherit what is left of its deadline, since the server runs each
call inside that deadline.

:func:`idempotent` marks a server method that is safe to run twice: its client
retries it across a restart or a lost connection, within its deadline.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = [
    "CallContext",
    "current_call",
    "current_deadline",
    "deadline",
    "idempotent",
    "run_in_call",
    "serving",
    "time_left_s",
]

_F = TypeVar("_F", bound=Callable[..., Any])

#: monotonic time by which calls made here must be answered; None: no deadline
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "rpcgen_deadline", default=None
)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every call made in this block (this thread or task) must be answered within
    ``seconds`` from now, or raise :class:`~rpcgen.runtime.errors.CallTimeout`; a
    server that gets the call after its deadline does not run it."""
    if not seconds >= 0 or math.isinf(seconds):
        raise ValueError(f"deadline(seconds) must be a finite number >= 0, got {seconds!r}")
    end = time.monotonic() + seconds
    outer = current_deadline()
    token = _DEADLINE.set(end if outer is None else min(outer, end))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left_s(default: float | None = None) -> float | None:
    """Seconds left before the current deadline (``default`` where none applies)."""
    end = current_deadline()
    if end is None:
        return default
    return end - time.monotonic()


def current_deadline() -> float | None:
    """The monotonic time by which calls made here must be answered: the innermost
    :func:`deadline` block's, or (in a server method) its own call's; None: none."""
    return _DEADLINE.get()


def idempotent(method: _F) -> _F:
    """Mark a server method as safe to run more than once (it reads, or it sets a value).

    ``rpcgen generate`` reads the mark: the generated client retries such a method
    across a server restart or a lost connection, with backoff, within the call's
    deadline. Methods without the mark are never retried: a request that may have
    reached the server raises instead.
    """
    method.__rpcgen_idempotent__ = True  # type: ignore[attr-defined]
    return method


class CallContext:
    """The call a server method runs for (see :func:`current_call`)."""

    __slots__ = ("_event", "_flag", "_hook", "deadline", "method")

    def __init__(self, method: str, deadline: float | None = None) -> None:
        self.method = method
        #: monotonic time in this process by which the caller wants the answer; None: none
        self.deadline = deadline
        self._flag = False
        self._event: threading.Event | None = None  # made by the first wait: most calls never
        #: run on cancel (a coroutine method's future: it gets CancelledError)
        self._hook: Callable[[], Any] | None = None

    def __repr__(self) -> str:
        return f"<CallContext {self.method}() left={self.time_left_s} cancelled={self._flag}>"

    @property
    def time_left_s(self) -> float | None:
        """Seconds left before the caller gives up (None: it waits for ever)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def cancelled(self) -> bool:
        """True once the caller cancelled the call (an asyncio task cancelled, a stream
        closed) or its connection is gone: the method may stop early."""
        return self._flag

    def cancel(self) -> None:
        self._flag = True
        with _EVENTS:
            event, hook = self._event, self._hook
        if event is not None:
            event.set()
        if hook is not None:
            hook()

    def wait_cancelled(self, timeout_s: float | None = None) -> bool:
        """Sleep up to ``timeout_s`` (or until the deadline), waking at once if the call
        is cancelled; True if it was. A stream's producer sleeps between items this way."""
        left = self.time_left_s
        if left is not None:
            timeout_s = left if timeout_s is None else min(timeout_s, left)
        with _EVENTS:
            if self._event is None:
                self._event = threading.Event()
                if self._flag:
                    self._event.set()
            event = self._event
        return event.wait(None if timeout_s is None else max(timeout_s, 0.0))


_EVENTS = threading.Lock()


_CURRENT: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "rpcgen_call", default=None
)


#: The call a server thread runs (a thread-local: cheaper than a context variable on
#: every call; coroutine methods, which share the loop's thread, use _CURRENT). A plain
#: call with no deadline is just its method's name until someone asks for its context.
_SERVING = threading.local()


def current_call() -> CallContext:
    """The call this server method runs for. Outside a server call (direct mode, or a
    plain function call), a context with no deadline that is never cancelled."""
    call = _CURRENT.get()
    if call is None:
        call = getattr(_SERVING, "call", None)
        if type(call) is str:  # a call with no deadline: its context is made on demand
            call = _SERVING.call = CallContext(call)
    return call if call is not None else CallContext("")


def run_in_call(call: CallContext, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``function`` as the server side of ``call``: :func:`current_call` returns it,
    and calls it makes to other services inherit its deadline."""
    with serving(call):
        return function(*args, **kwargs)


class serving:
    """``with serving(call):`` runs the block as the server side of ``call`` (a stream's
    producer thread, for each item its generator makes)."""

    __slots__ = ("call", "previous", "token")

    def __init__(self, call: CallContext) -> None:
        self.call = call
        self.previous: CallContext | None = None
        self.token: contextvars.Token[float | None] | None = None

    def __enter__(self) -> None:
        self.previous = getattr(_SERVING, "call", None)
        _SERVING.call = self.call
        if self.call.deadline is not None:  # calls the method makes inherit it
            self.token = _DEADLINE.set(self.call.deadline)

    def __exit__(self, *exc: object) -> None:
        _SERVING.call = self.previous
        if self.token is not None:
            _DEADLINE.reset(self.token)
            self.token = None
