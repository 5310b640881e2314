"""How a server process announces itself: its process title, and its readiness.

While it serves, a server's process title is a marker that names the service,
e.g. ``rpcgen:PriceFetcher port=50001 owner=4242``. Stale-server cleanup and
``rpcgen ps`` identify our servers by it; it never contains the authkey.

:class:`ReadySignal` is the ``server_ready`` object handed to
``_start_server_process``: the child says "ready" (or why it failed) through it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import re
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any, Protocol

__all__ = [
    "MARKER_PREFIX",
    "ReadySignal",
    "ServerTitle",
    "Settable",
    "parse_process_title",
    "process_title",
]

MARKER_PREFIX = "rpcgen:"
_PID_MAX = 1 << 22  # Linux's largest pid_max
_TITLE_RE = re.compile(
    r"^rpcgen:(?P<service>[A-Za-z_][A-Za-z0-9_.]*) port=(?P<port>\d+) owner=(?P<owner>\d+)"
)


@dataclass(frozen=True)
class ServerTitle:
    """What a server's process title says about it."""

    service: str
    port: int
    owner_pid: int


def process_title(service: str, port: int, owner_pid: int) -> str:
    return f"{MARKER_PREFIX}{service} port={port} owner={owner_pid}"


def parse_process_title(cmdline: list[str] | str) -> ServerTitle | None:
    """Parse a process's command line; None unless it is an rpcgen server marker."""
    text = cmdline if isinstance(cmdline, str) else " ".join(cmdline)
    match = _TITLE_RE.match(text)
    if match is None:
        return None
    # Any process may set any title: only a plausible port and pid count as ours.
    port, owner = match["port"], match["owner"]
    if len(port) > 5 or len(owner) > 10 or not 0 < int(port) < 65536 or int(owner) > _PID_MAX:
        return None
    return ServerTitle(match["service"], int(port), int(owner))


class Settable(Protocol):
    """What a server process sets once it serves (a ReadySignal, or an Event)."""

    def set(self) -> None: ...


class ReadySignal:
    """The ``server_ready`` object handed to ``_start_server_process``.

    It behaves like ``multiprocessing.Event`` for the child (``set()``), but is a
    one-way pipe: the parent waits on it *and* on the process sentinel at once,
    so a child that dies during startup is seen immediately, and :meth:`fail`
    carries the child's exception text back to the parent.
    """

    def __init__(self, ctx: BaseContext | None = None) -> None:
        ctx = ctx or multiprocessing.get_context()
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._outcome: tuple[str, str | None] | None = None
        #: the owner's TLS settings, for serve_rpc in the server process (a TlsPolicy:
        #: the design doc's ``_start_server_process`` passes nothing else that could)
        self.tls: Any = None

    def __repr__(self) -> str:
        return f"<ReadySignal outcome={self._outcome!r}>"

    # child side
    def set(self) -> None:
        with contextlib.suppress(OSError):
            self._writer.send(("ready", None))

    def fail(self, detail: str) -> None:
        with contextlib.suppress(OSError):
            self._writer.send(("error", detail))

    # parent side
    @property
    def reader(self) -> Connection:
        return self._reader

    def poll_outcome(self) -> tuple[str, str | None] | None:
        """('ready', None) or ('error', text) once the child said so, else None."""
        if self._outcome is None:
            try:
                if self._reader.poll():
                    self._outcome = self._reader.recv()
            except (OSError, EOFError):
                return None
        return self._outcome

    def is_set(self) -> bool:
        outcome = self.poll_outcome()
        return outcome is not None and outcome[0] == "ready"

    def wait(self, timeout: float | None = None) -> bool:
        if self._outcome is None:
            with contextlib.suppress(OSError, EOFError):
                if self._reader.poll(timeout):
                    self._outcome = self._reader.recv()
        return self.is_set()

    def close_writer(self) -> None:
        """Parent: drop our copy of the child's end once the child has it."""
        self._writer.close()

    def close(self) -> None:
        self._writer.close()
        self._reader.close()
