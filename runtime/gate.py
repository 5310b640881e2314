"""The server's front door: connections are accepted and authenticated in one thread.

A new connection has ``deadline_s`` in all (not per read) to finish the handshake
(:func:`~.transport.server_handshake`'s steps, run here without blocking) and send
its first request. Until then it holds no thread, only its socket; at most
``max_pending`` wait at once, and when one more arrives the oldest that has not
even sent its hello is dropped (one that has is a client at work: a newcomer is
turned away before it is). So peers that trickle a byte now and then, or never
finish, cannot hold the server's threads or file descriptors: real clients, which
finish in milliseconds, still get in. An authenticated connection is handed to
``serve(socket, request, tls)`` in a thread of its own.

With a TLS context the TLS handshake comes first, run the same way (in memory,
:class:`~.tls.Tls`), and rpcgen's handshake follows inside it, bound to the channel.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import pickle
import resource
import secrets
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .tls import Tls
from .transport import HELLO, TLS_BINDING, proof, socket_binding

__all__ = ["Gate", "default_max_pending"]

logger = logging.getLogger("rpcgen")

_NONCE = 32
_HEADER = struct.Struct("!i")
#: The largest first request of a connection (a tuple naming what it asks for).
FIRST_REQUEST = 1 << 16
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BATCH = 16
_TLS_READ = 1 << 16
#: Stages before the peer's hello: a peer still here is not a client at work yet.
_UNGREETED = ("tls", "hello")


def default_max_pending() -> int:
    """A quarter of this process's file descriptors (16 to 1024): the rest stay free
    for authenticated connections and the server's own files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(1024, soft // 4))


class _Pending:
    """One connection's handshake, a step at a time as bytes can be read or written."""

    __slots__ = (
        "binding",
        "buffer",
        "deadline",
        "mine",
        "need",
        "out",
        "sock",
        "stage",
        "theirs",
        "tls",
    )

    def __init__(self, sock: socket.socket, deadline: float, tls: Tls | None) -> None:
        self.sock = sock
        self.deadline = deadline
        self.tls = tls
        self.stage = "hello" if tls is None else "tls"
        self.need = len(HELLO) + _NONCE
        self.buffer = b""
        self.out = b""
        self.mine = b""
        self.theirs = b""
        self.binding = b""


class Gate:
    """Accepts on ``listener`` and authenticates with ``key`` until ``stop`` is set."""

    def __init__(
        self,
        listener: socket.socket,
        key: bytes,
        *,
        serve: Callable[[socket.socket, tuple[Any, ...], Tls | None], None],
        stop: threading.Event,
        deadline_s: float,
        max_pending: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.listener = listener
        self.key = key
        self.tls = tls
        self.serve = serve
        self.stop = stop
        self.deadline_s = deadline_s
        self.max_pending = max_pending or default_max_pending()
        self.clock = clock
        self.pending: OrderedDict[socket.socket, _Pending] = OrderedDict()
        self.selector = selectors.DefaultSelector()
        #: what was dropped or refused, and why (tests read these)
        self.dropped_late = 0
        self.dropped_for_room = 0
        self.refused = 0

    def run(self) -> None:
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        paused_until = 0.0
        try:
            while not self.stop.is_set():
                now = self.clock()
                if paused_until and now >= paused_until:
                    self.selector.register(self.listener, selectors.EVENT_READ)
                    paused_until = 0.0
                wait = 0.5
                if self.pending:
                    oldest = next(iter(self.pending.values()))
                    wait = min(wait, max(oldest.deadline - now, 0.0))
                if paused_until:
                    wait = min(wait, max(paused_until - now, 0.0))
                for key, events in self.selector.select(wait):
                    if key.fileobj is self.listener:
                        if not self._accept():
                            self.selector.unregister(self.listener)  # out of fds: a pause
                            paused_until = self.clock() + 0.05
                        continue
                    pending: _Pending = key.data
                    if self.pending.get(pending.sock) is not pending:
                        continue  # dropped earlier in this round
                    try:
                        self._step(pending, events)
                    except Exception:  # never let the front door die: drop this peer
                        logger.exception("handshake step failed")
                        self._close(pending)
                self._drop_late(self.clock())
        finally:
            for pending in list(self.pending.values()):
                self._close(pending)
            self.selector.close()

    # -- accepting -------------------------------------------------------------------------

    def _accept(self) -> bool:
        """Accept what is waiting (a few at a time, so that the handshakes under way
        keep moving); False when out of file descriptors with none to free."""
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    if self._make_room():
                        continue
                    logger.warning("accept failed (%s); pausing", exc)
                    return False
                return True
            sock.setblocking(False)
            if len(self.pending) >= self.max_pending and not self._make_room():
                self.dropped_for_room += 1
                sock.close()  # every waiting peer is a client at work: turn this one away
                continue
            tls = Tls(self.tls, server_side=True) if self.tls is not None else None
            pending = _Pending(sock, self.clock() + self.deadline_s, tls)
            self.pending[sock] = pending
            self.selector.register(sock, selectors.EVENT_READ, pending)
        return True

    def _make_room(self) -> bool:
        """Drop the oldest peer that has not sent its hello yet; False if there is none.

        A candidate's waiting bytes are read first: a client whose hello has arrived but
        was not read yet (a burst of accepts came first) is at work, not stalled.
        """
        for pending in list(self.pending.values()):
            if pending.stage not in _UNGREETED:
                continue
            self._step(pending, selectors.EVENT_READ)
            if self.pending.get(pending.sock) is not pending:
                return True  # it hung up or was refused: room made
            if pending.stage in _UNGREETED:
                self.dropped_for_room += 1
                self._close(pending)
                return True
        return False

    def _drop_late(self, now: float) -> None:
        while self.pending:
            oldest = next(iter(self.pending.values()))
            if oldest.deadline > now:
                return
            self.dropped_late += 1
            self._close(oldest)

    def _close(self, pending: _Pending, *, keep_socket: bool = False) -> None:
        self.pending.pop(pending.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(pending.sock)
        if not keep_socket:
            pending.sock.close()

    # -- the handshake, one step at a time -----------------------------------------------

    def _step(self, pending: _Pending, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE and pending.out:
                sent = pending.sock.send(pending.out)
                pending.out = pending.out[sent:]
                if not pending.out:
                    self.selector.modify(pending.sock, selectors.EVENT_READ, pending)
                return
            if not events & selectors.EVENT_READ:
                return
            # Plain: never read past what this stage needs (the rest is the served
            # connection's). TLS: whole records; a client sends nothing more until answered.
            want = _TLS_READ if pending.tls else pending.need - len(pending.buffer)
            data = pending.sock.recv(want)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(pending)
            return
        if not data:
            self._close(pending)
            return
        try:
            if pending.tls is not None:
                data = self._open_tls(pending, pending.tls, data)
            pending.buffer += data
            while pending.need and len(pending.buffer) >= pending.need:
                chunk = pending.buffer[: pending.need]
                pending.buffer = pending.buffer[pending.need :]
                self._advance(pending, chunk)
        except (ValueError, OSError, pickle.UnpicklingError, EOFError) as exc:
            logger.debug("refused a connection: %s", exc)
            self.refused += 1
            self._close(pending)

    def _open_tls(self, pending: _Pending, tls: Tls, data: bytes) -> bytes:
        """The plain text in ``data`` (TLS setup first; ``ssl.SSLError`` if it fails)."""
        if pending.stage != "tls":
            return tls.decrypt(data)
        try:
            done, out, plain = tls.handshake(data)
        except ssl.SSLError:
            with contextlib.suppress(OSError):  # say why (e.g. no client certificate)
                pending.sock.send(tls.alert())
            raise
        if out:
            self._send_raw(pending, out)
        if not done:
            return b""
        pending.stage = "hello"
        return plain

    def _send(self, pending: _Pending, data: bytes) -> None:
        self._send_raw(pending, pending.tls.encrypt(data) if pending.tls else data)

    def _send_raw(self, pending: _Pending, data: bytes) -> None:
        if pending.out:
            pending.out += data
            return
        sent = pending.sock.send(data)
        if sent < len(data):
            pending.out = data[sent:]
            self.selector.modify(pending.sock, selectors.EVENT_WRITE, pending)

    def _advance(self, pending: _Pending, data: bytes) -> None:
        if pending.stage == "hello":
            if data[: len(HELLO)] != HELLO:
                raise ValueError("the peer does not speak rpcgen's handshake")
            pending.theirs = data[len(HELLO) :]
            pending.mine = secrets.token_bytes(_NONCE)
            pending.binding = (
                TLS_BINDING if pending.tls else socket_binding(pending.sock.getsockname())
            )
            self._send(
                pending,
                pending.mine
                + proof(self.key, b"server", pending.theirs, pending.mine, pending.binding),
            )
            pending.stage, pending.need = "proof", _NONCE
        elif pending.stage == "proof":
            expected = proof(self.key, b"client", pending.mine, pending.theirs, pending.binding)
            if not secrets.compare_digest(data, expected):
                raise ValueError("the client's proof is wrong (a different key)")
            pending.stage, pending.need = "header", _HEADER.size
        elif pending.stage == "header":
            (size,) = _HEADER.unpack(data)
            if not 0 < size <= FIRST_REQUEST:
                raise ValueError(f"a first request of {size} bytes")
            pending.stage, pending.need = "request", size
        else:
            request = pickle.loads(data)
            if not isinstance(request, tuple) or len(request) != 4:
                raise ValueError("a first request that is not (id, name, args, kwargs)")
            if pending.buffer or pending.out:
                raise ValueError("the peer sent more before its first reply")
            pending.need = 0
            self._close(pending, keep_socket=True)
            pending.sock.setblocking(True)
            self._hand_off(pending.sock, request, pending.tls)

    def _hand_off(self, sock: socket.socket, request: tuple[Any, ...], tls: Tls | None) -> None:
        try:
            threading.Thread(target=self.serve, args=(sock, request, tls), daemon=True).start()
        except RuntimeError as exc:  # no thread can be started now
            logger.warning("could not serve an authenticated connection (%r)", exc)
            sock.close()
