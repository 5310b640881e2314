"""The server side of a multiplexed (asyncio) connection: many calls in flight.

Requests carry ids (:func:`~.wire.tagged_frame`) and replies go back as calls
finish. A frame whose id has the :data:`~.dispatch.CONTROL` bit is a message for
a call already running: a cancel (the client's task was cancelled), or a stream's
credit or close. A stream runs in a thread of its own, outside the pool of
``max_concurrent_calls``, so open streams never keep unary calls waiting.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

from .calls import CallContext
from .dispatch import StreamCall
from .stream_server import ServerStream
from .tls import Tls, TlsStream
from .wire import CONTROL, FrameReader, Payload, ProtocolError, Stream, tagged_frame, write_frames

if TYPE_CHECKING:
    from .serve import _RPCServer
    from .shm import SharedLink

__all__ = ["MuxSession"]

logger = logging.getLogger("rpcgen")

# Under malloc's mmap threshold: a bigger buffer costs an mmap and a munmap per read.
_READ_SIZE = 1 << 16
# Replies waiting to be written to a peer: past this, the peer's requests are not read
# until it reads its replies (a peer that never reads cannot grow the server's memory).
_OUTBOX_HIGH = 8 << 20
# Requests waiting for a thread: past this, reading pauses until threads take some.
_INBOX_HIGH = 8 << 20


class MuxSession:
    """One multiplexed connection: requests carry ids, replies go back as they finish.

    The connection's thread reads, without pause: each request is stamped with its
    arrival (a call's deadline counts from there, however long it then waits for a
    thread) and queued; control messages (a cancel, a stream's credit or close) are
    acted on at once, even while every call is busy. Up to ``max_concurrent_calls``
    worker threads run the queued calls (started as they are needed, kept for the
    connection's life). Replies that finish while another is being written go out
    with it, in one system call. Reading pauses only while more than ``_OUTBOX_HIGH``
    bytes of replies wait for a peer that does not read them, or more than
    ``_INBOX_HIGH`` bytes of requests wait for a thread.
    """

    def __init__(
        self, server: _RPCServer, fd: int, tls: Tls | None = None, link: SharedLink | None = None
    ) -> None:
        self.server = server
        #: the client's shared memory for large buffers (see .shm), if it has any
        self.link = link
        self.calls: dict[int, CallContext] = {}  # running unary calls, for cancels
        self.streams: dict[int, ServerStream] = {}
        self.fd = fd
        self.tls = tls
        self.stream: Stream = fd if tls is None else TlsStream(fd, tls)  # for writing
        self.limit = max(1, server.max_concurrent_calls)
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.workers: list[threading.Thread] = []
        self.free = 0  # workers waiting for a request
        self.pending = 0  # requests queued that no worker took yet
        self.inbox = 0  # their bytes
        self.reader = FrameReader(server.max_message_bytes)
        self.outbox: list[bytes | memoryview] = []
        self.unsent = 0  # bytes of replies queued or being written
        self.drained = threading.Condition(self.lock)
        self.writing = False
        self.broken = False
        self.stream_threads: set[threading.Thread] = set()

    def run(self) -> None:
        """Serve until the client hangs up; return once no thread can touch the fd."""
        try:
            while True:
                requests = self._read()
                if requests is None:
                    return
                for request in requests:
                    self._dispatch(request)
        finally:
            # The client is gone: every call and stream still running is cancelled.
            for call in list(self.calls.values()):
                call.cancel()
            for stream in list(self.streams.values()):
                stream.cancel()
            with self.lock:
                workers = list(self.workers)
            for _ in workers:
                self.queue.put(None)
            for worker in workers:
                worker.join()
            for thread in list(self.stream_threads):
                thread.join()
            if self.link is not None:
                self.link.close()  # its memory back, but for blocks still held

    def _dispatch(self, item: tuple[int, bytes, float]) -> None:
        with self.lock:
            self.pending += 1
            self.inbox += len(item[1])
            start = self.pending > self.free and len(self.workers) < self.limit
            if start:
                worker = threading.Thread(
                    target=self._work, name=f"{threading.current_thread().name}+", daemon=True
                )
                self.workers.append(worker)
        self.queue.put(item)
        if start:
            worker.start()

    def _work(self) -> None:
        get = self.queue.get
        answer = self.server.dispatch.answer
        calls = self.calls
        lock = self.lock
        link = self.link
        reader = None if link is None else link.reader
        while True:
            with lock:
                self.free += 1
            item = get()
            with lock:
                self.free -= 1
                if item is not None:
                    self.pending -= 1
                    self.inbox -= len(item[1])
                    self.drained.notify_all()
            if item is None:
                return
            ident, request, arrived = item
            reply = answer(request, arrived, calls, ident, reader)
            if isinstance(reply, StreamCall):
                self._open_stream(ident, reply)
            else:
                if link is not None:
                    reply = link.place(reply)  # the request's buffers are free from here
                self._send(tagged_frame(ident, reply))
            del item, request, reply

    def _read(self) -> list[tuple[int, bytes, float]] | None:
        """At least one request; None at EOF, on an error, or on a bad frame."""
        stop = self.server.stop_event
        while not stop.is_set():
            with self.lock:
                while (self.unsent > _OUTBOX_HIGH or self.inbox > _INBOX_HIGH) and not (
                    self.broken or stop.is_set()
                ):
                    self.drained.wait(0.5)
                if self.broken:
                    return None
            try:
                data = os.read(self.fd, _READ_SIZE)
            except OSError:
                return None
            if not data:
                return None
            try:
                if self.tls is not None:
                    data = self.tls.decrypt(data)
                frames = self.reader.feed(data)
            except (ProtocolError, ssl.SSLError) as exc:
                logger.warning("dropping a connection: %s", exc)
                return None
            arrived = time.monotonic()  # a call's deadline counts from here
            requests = []
            for ident, body in frames:
                if ident & CONTROL:
                    self._control(ident & ~CONTROL, body)
                else:
                    requests.append((ident, body, arrived))
            if requests:
                return requests
        return None

    def _control(self, ident: int, body: bytes) -> None:
        """A message for a running call (the reader's thread: never blocks)."""
        try:
            message = pickle.loads(body)
        except Exception:
            return
        stream = self.streams.get(ident)
        if stream is not None:
            stream.on_control(message)
            return
        call = self.calls.get(ident)
        if call is not None:  # a cancel; anything else for a unary call is ignored
            call.cancel()

    def _open_stream(self, ident: int, opened: StreamCall) -> None:
        """Serve a stream in a thread of its own: this worker goes back to the pool."""

        link = self.link

        def send(data: Payload) -> None:
            if self.broken:
                raise BrokenPipeError("the client is gone")
            self._send(tagged_frame(ident, data if link is None else link.place(data)))

        stream = ServerStream(opened.items, opened.call, send, window=opened.window)
        self.streams[ident] = stream
        thread = threading.Thread(
            target=self._run_stream,
            args=(ident, stream),
            name=f"{threading.current_thread().name}~{ident}",
            daemon=True,
        )
        self.stream_threads.add(thread)
        if self.broken:
            stream.cancel()
        thread.start()

    def _run_stream(self, ident: int, stream: ServerStream) -> None:
        try:
            stream.run()
        finally:
            self.streams.pop(ident, None)
            self.stream_threads.discard(threading.current_thread())

    def _send(self, pieces: list[bytes | memoryview]) -> None:
        size = sum(len(piece) for piece in pieces)
        with self.lock:
            self.outbox.extend(pieces)
            self.unsent += size
            if self.writing:
                return  # the writer takes these with its next batch
            self.writing = True
        while True:
            with self.lock:
                batch, self.outbox = self.outbox, []
                if not batch or self.broken:
                    self.writing = False
                    return
            try:
                write_frames(self.stream, batch)
            except OSError:
                with self.lock:
                    self.broken = True  # the client is gone: the leader sees EOF
                    self.drained.notify_all()
            else:
                with self.lock:
                    self.unsent -= sum(len(piece) for piece in batch)
                    self.drained.notify_all()
