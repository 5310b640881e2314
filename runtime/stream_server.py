"""The server side of a streaming call: a server method that returns a generator.

The generator runs in a producer thread; a writer thread sends what it produced.
Items travel in batches, ``("#ITEMS", [item, ...])``, and a batch is whatever the
producer made while the writer sent the one before: one item at a time when the
producer is slow (an item is never held back waiting for more), thousands at a
time when it outruns the network. The first item goes out at once, with the
reply that opens the stream.

Flow control: the client grants a window (items and bytes); the writer sends only
within it, and the client returns credit as its consumer takes items. When the
window is full the producer stops once its queue is full (the queue is sized
from the window's bytes and the items' pickled size), so a consumer that stops
reading stops the generator, and both sides' memory stays bounded.

Ending early: a close from the client, its connection's end, or a cancel marks the
call cancelled (:func:`~rpcgen.runtime.calls.current_call`); the producer closes
the generator at its next ``yield`` (its ``finally`` runs then). An exception in
the generator is sent after the items before it, like a unary call's.

Wire messages (pickled tuples):

* server -> client: ``("#STREAM", [first items])`` (the call's reply), then
  ``("#ITEMS", [...])`` ..., then ``("#END", None)`` or ``("#RAISED", info)``;
* client -> server: ``("#CREDIT", items, bytes)``, ``("#CLOSE",)`` (stop now),
  ``("#DONE",)`` (a plain connection: the client read the end; it is in step again).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import select
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any, cast

from .calls import CallContext, run_in_call, serving
from .remote import pack_exception
from .wire import Payload, ProtocolError, Stream, dumps, looks_big, recv_message

__all__ = [
    "CLOSE",
    "DEFAULT_WINDOW",
    "DONE",
    "STREAM_TYPES",
    "ServerStream",
    "is_stream",
    "sync_items",
]

logger = logging.getLogger("rpcgen")

#: the client's messages that end a stream: stop now; read the end (in step again)
CLOSE = pickle.dumps(("#CLOSE",), pickle.HIGHEST_PROTOCOL)
DONE = pickle.dumps(("#DONE",), pickle.HIGHEST_PROTOCOL)
#: (items, bytes) a client lets the server send ahead of its consumer, by default
DEFAULT_WINDOW = (65536, 8 << 20)
_FIRST_QUEUE = 64  # the producer's queue before any item's size is known


#: what a streaming method returns: a generator or an async generator
STREAM_TYPES = (types.GeneratorType, types.AsyncGeneratorType)


def is_stream(result: Any) -> bool:
    return isinstance(result, STREAM_TYPES)


def sync_items(result: Any) -> Iterator[Any]:
    """A streaming method's items as a plain iterator (an async generator runs on a
    loop of its own, in the producer's thread; closing it closes the generator)."""
    if isinstance(result, types.AsyncGeneratorType):
        return _drive_async(result)
    return cast(Iterator[Any], result)


def _drive_async(agen: Any) -> Iterator[Any]:
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        try:
            loop.run_until_complete(agen.aclose())  # its finally runs here
        finally:
            loop.close()


class ServerStream:
    """One streaming call: call :meth:`run` in the thread that got the generator."""

    def __init__(
        self,
        items: Iterator[Any],
        call: CallContext,
        send: Callable[[Payload], None],
        *,
        window: tuple[int, int] = DEFAULT_WINDOW,
        control: Stream | None = None,
    ) -> None:
        self.items = items
        self.call = call
        self.send = send
        self.window_items = max(1, int(window[0]))
        self.window_bytes = max(1, int(window[1]))
        self.control = control  # a plain connection: credits arrive on it
        self.queue: collections.deque[Any] = collections.deque()
        self.cap = min(_FIRST_QUEUE, self.window_items)
        self.item_bytes = 64  # pickled bytes per item, as last measured
        self.room = threading.Event()
        self.lock = threading.Lock()
        self.wake = -1  # the writer's wake-up eventfd, made with the writer
        self.writer_idle = False
        self.final: tuple[str, Any] | None = None
        self.sent = [0, 0]  # items, bytes
        self.acked = [0, 0]
        self.done_ack = False  # the client's #DONE / #CLOSE (plain connection)
        self.lost = False  # the connection failed: it is not reusable

    # -- control, from the client ------------------------------------------------------

    def on_control(self, message: Any) -> None:
        """A client message (credit, close, done); any thread."""
        kind = message[0] if isinstance(message, tuple) and message else None
        if kind == "#CREDIT":
            with self.lock:
                self.acked[0] += int(message[1])
                self.acked[1] += int(message[2])
        elif kind == "#DONE":
            self.done_ack = True
        else:  # #CLOSE, or anything else: stop
            self.done_ack = True
            self.cancel()
            return
        self._poke()

    def cancel(self) -> None:
        self.call.cancel()
        self.room.set()
        self._poke()

    def _poke(self) -> None:
        if self.wake >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self.wake, 1)

    # -- the producer (the calling thread) ------------------------------------------------

    def run(self) -> bool:
        """Produce and send until the end; True if the connection is still in step."""
        writer: threading.Thread | None = None
        try:
            if not self._first():
                return not self.lost
            self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            writer = threading.Thread(
                target=self._write_loop, name=f"{threading.current_thread().name}>", daemon=True
            )
            writer.start()
            self._produce()
        finally:
            if writer is not None:
                writer.join()
            if self.wake >= 0:
                os.close(self.wake)
        return not self.lost

    def _first(self) -> bool:
        """Send the reply that opens the stream, with the first item; False if that was all."""
        try:
            item = run_in_call(self.call, next, self.items)
        except StopIteration:
            self._reply(("#STREAM", []), ("#END", None))
            return False
        except BaseException as exc:
            self._reply(("#STREAM", []), ("#RAISED", pack_exception(exc)))
            return False
        self._reply(("#STREAM", [item]))
        self.sent[0] += 1
        return not self.lost

    def _reply(self, *messages: tuple[str, Any]) -> None:
        for message in messages:
            try:
                data = self._dump(message)
                if message[0] == "#STREAM" and message[1]:
                    # The first item's size sizes the producer's queue: a window's bytes.
                    self.item_bytes = len(data)
                    self.cap = max(1, min(self.window_items, self.window_bytes // len(data)))
                self.send(data)
            except _Unpicklable as exc:
                self.send(dumps(("#UNSERIALIZABLE", str(exc)), False))
            except OSError:
                self.lost = True
                self.call.cancel()
                return
        if messages[-1][0] != "#STREAM":
            self._await_done()

    def _dump(self, message: tuple[str, Any]) -> Payload:
        try:
            return dumps(message, looks_big(message[1]) if message[0] != "#RAISED" else False)
        except Exception as exc:
            raise _Unpicklable(f"an item of the stream cannot be pickled: {exc!r}") from exc

    def _produce(self) -> None:
        queue, call, room = self.queue, self.call, self.room
        append = queue.append
        final: tuple[str, Any] = ("#END", None)
        try:
            with serving(call):
                for item in self.items:
                    append(item)  # no lock: the writer takes from the other end
                    if self.writer_idle:
                        self.writer_idle = False
                        self._poke()
                    if len(queue) >= self.cap:
                        room.clear()
                        while len(queue) >= self.cap and not call._flag:
                            room.wait(0.5)
                    if call._flag:
                        break
        except BaseException as exc:
            final = ("#RAISED", pack_exception(exc))
        finally:
            close = getattr(self.items, "close", None)
            if close is not None:
                try:
                    with serving(call):
                        close()  # a generator's finally runs now
                except Exception as exc:
                    logger.warning("closing a stream's generator raised %r", exc)
        self.final = final
        self._poke()

    # -- the writer ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            self._write()
        except OSError:
            self.lost = True
        except Exception:  # never leave the producer waiting
            logger.exception("stream writer failed")
            self.lost = True
        finally:
            if self.lost:
                self.call.cancel()
            self.room.set()

    def _write(self) -> None:
        queue = self.queue
        popleft = queue.popleft
        while True:
            if self.call.cancelled:
                return
            with self.lock:
                room_items = self.window_items - (self.sent[0] - self.acked[0])
                room_bytes = self.window_bytes - (self.sent[1] - self.acked[1])
            room = room_items > 0 and room_bytes > 0
            # what fits the window, by count and by the items' last measured size
            n = min(len(queue), room_items, max(1, room_bytes // self.item_bytes)) if room else 0
            if n > 0:
                batch = [popleft() for _ in range(n)]
                self.room.set()
                try:
                    data = self._dump(("#ITEMS", batch))
                except _Unpicklable as exc:
                    self.send(dumps(("#UNSERIALIZABLE", str(exc)), False))
                    self.call.cancel()
                    self._await_done()
                    return
                del batch
                self.send(data)
                size = len(data)
                del data
                self.sent[0] += n
                self.sent[1] += size
                # the producer's queue holds about a window's bytes of items
                self.item_bytes = max(1, size // n)
                self.cap = max(1, min(self.window_items, self.window_bytes // self.item_bytes))
                continue
            if not queue and self.final is not None:
                self.send(dumps(self.final, False))
                self._await_done()
                return
            self.writer_idle = True
            # Announced first, checked again after: whatever the producer queues from
            # now on wakes us.
            if (queue and room) or (not queue and self.final is not None):
                self.writer_idle = False
                continue
            self._wait()

    def _wait(self) -> None:
        """Until the producer or the client has news (a plain connection: its socket)."""
        fds = [self.wake] if self.control is None else [self.wake, _fileno(self.control)]
        readable, _, _ = select.select(fds, [], [], 1.0)
        self.writer_idle = False
        if self.wake in readable:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self.wake)
        if len(fds) > 1 and fds[1] in readable:
            self._read_control()

    def _read_control(self) -> None:
        assert self.control is not None
        try:
            message = pickle.loads(recv_message(self.control, 4096))
        except (EOFError, OSError, ProtocolError, pickle.UnpicklingError, ValueError):
            self.lost = True
            self.done_ack = True
            self.cancel()
            return
        self.on_control(message)

    def _await_done(self) -> None:
        """A plain connection is in step again once the client says it read the end."""
        while self.control is not None and not self.done_ack and not self.lost:
            self._read_control()


class _Unpicklable(Exception):
    pass


def _fileno(stream: Stream) -> int:
    return stream if isinstance(stream, int) else stream.fileno()  # type: ignore[attr-defined]
