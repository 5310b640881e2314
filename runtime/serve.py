"""Server-process side: serve an object over RPC until told to stop.

:func:`serve_rpc` is module level, so a module-level process target can call it
under every start method (fork, spawn, forkserver). While it serves, its process
title names the service (see :mod:`rpcgen.runtime.announce`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import select
import signal
import socket
import ssl
import sys
import threading
import traceback
from collections.abc import Mapping
from multiprocessing import managers
from multiprocessing import util as mp_util
from multiprocessing.connection import Connection
from typing import Any, cast

# Imported here, in the parent, so forked children do not pay ~9 ms to import it.
import setproctitle

from . import shm
from .announce import Settable, process_title
from .constants import (
    DEFAULT_HANDSHAKE_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_MESSAGE_BYTES,
)
from .dispatch import Dispatcher, StreamCall
from .endpoint import Address, Endpoint
from .gate import Gate
from .mux_session import MuxSession
from .shm import SharedLink
from .stream_server import ServerStream
from .tls import Tls, TlsPolicy, TlsStream
from .transport import OBJECT_ID, SERIALIZER, Link, set_recv_timeout, stream_of
from .wire import Payload, ProtocolError, Stream, recv_message, send_message

__all__ = ["serve_rpc"]

logger = logging.getLogger("rpcgen")


class _RPCServer(managers.Server):
    """A manager Server with ``obj`` registered up front under a fixed id.

    rpcgen clients open each connection with ``rpcgen_accept``, served by a lean
    loop (plain pickle, one write per reply, no BaseProxy fallbacks). Every
    connection starts with rpcgen's handshake (run by :class:`~.gate.Gate`: the
    server proves first, bound to its socket), so a stock BaseManager client, which
    expects multiprocessing's challenge, is refused.
    """

    _ours = ("rpcgen_accept", "rpcgen_accept_mux")
    public = [*managers.Server.public, *_ours]  # noqa: RUF012  (as in Server)

    def __init__(
        self,
        obj: Any,
        address: Address,
        authkey: bytes,
        typeid: str,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # Registering the typeid too lets a BaseManager client that speaks rpcgen's
        # handshake (serializer "rpcgen") reach the same object by its typeid.
        registry: dict[str, Any] = {typeid: (lambda: obj, None, None, None)}
        super().__init__(registry, address, authkey, SERIALIZER)
        exposed = set(managers.public_methods(obj))  # type: ignore[attr-defined]
        self.id_to_obj[OBJECT_ID] = (obj, exposed, None)  # type: ignore[assignment]
        self.dispatch = Dispatcher(self.id_to_obj)
        path = Endpoint.of(address).path
        if path is not None:
            os.chmod(path, 0o600)  # a Unix socket: only this user may connect
        self.stop_event = threading.Event()
        self.handshake_timeout_s = handshake_timeout_s
        self.max_concurrent_calls = max_concurrent_calls
        self.max_message_bytes = max_message_bytes
        self.ssl_context = ssl_context

    def accepter(self) -> None:
        """Accept and authenticate connections in one thread (see :mod:`.gate`): a
        handshake has ``handshake_timeout_s`` in all, and holds no thread meanwhile."""
        listener: socket.socket = self.listener._listener._socket  # type: ignore[attr-defined]
        Gate(
            listener,
            self.authkey,  # type: ignore[attr-defined]
            serve=self._serve_authenticated,
            stop=self.stop_event,
            deadline_s=self.handshake_timeout_s,
            tls=self.ssl_context,
        ).run()

    def _serve_authenticated(
        self, sock: socket.socket, request: tuple[Any, ...], tls: Tls | None = None
    ) -> None:
        """An authenticated connection: what its first request asks for (as the stock
        Server's ``handle_request`` does after its handshake)."""
        conn: Link = Connection(sock.detach()) if tls is None else TlsStream(sock.detach(), tls)
        try:
            msg: tuple[str, Any]
            try:
                _, name, args, kwargs = request
                if name not in self.public:
                    raise ValueError(f"{name!r} is not a request of this server")
                function = getattr(self, name)
            except Exception:
                msg = ("#TRACEBACK", traceback.format_exc())
            else:
                try:
                    msg = ("#RETURN", function(conn, *args, **kwargs))
                except Exception:
                    msg = ("#TRACEBACK", traceback.format_exc())
            with contextlib.suppress(Exception):
                conn.send(msg)
        except SystemExit:
            pass  # our accept methods end a connection this way, as serve_client does
        finally:
            conn.close()

    def accept_connection(self, c: Link, name: str) -> None:
        set_recv_timeout(c, 0)  # authenticated: an idle connection may wait for ever
        # send and recv are all the stock loop uses: a TLS stream has both
        super().accept_connection(c, name)  # type: ignore[arg-type]

    def rpcgen_accept(self, conn: Link, name: str, shared: Any = None) -> None:
        set_recv_timeout(conn, 0)  # authenticated: an idle connection may wait for ever
        threading.current_thread().name = name
        link = _accept_shared(conn, shared)
        conn.send(("#RETURN", link is not None))
        self._serve_calls(conn, link)
        raise SystemExit(0)  # handle_request closes the connection, as for the stock loop

    def rpcgen_accept_mux(self, conn: Link, name: str, shared: Any = None) -> None:
        set_recv_timeout(conn, 0)
        threading.current_thread().name = name
        link = _accept_shared(conn, shared)
        conn.send(("#RETURN", link is not None))
        tls = conn.tls if isinstance(conn, TlsStream) else None
        MuxSession(self, conn.fileno(), tls, link).run()
        raise SystemExit(0)

    def _serve_calls(self, conn: Link, link: SharedLink | None = None) -> None:
        """One client connection: call, reply, repeat, until EOF or stop."""
        fd = stream_of(conn)
        stop = self.stop_event
        answer = self.dispatch.answer
        limit = self.max_message_bytes
        reader = None if link is None else link.reader
        while not stop.is_set():
            try:
                request = recv_message(fd, limit)
            except (ProtocolError, ssl.SSLError) as exc:
                logger.warning("dropping a connection: %s", exc)
                return
            except (EOFError, OSError):
                return
            reply = answer(request, 0.0, shared=reader)  # no queue: a call arrives as read
            del request
            if isinstance(reply, StreamCall):
                # The connection carries the stream until its end (the client reads it
                # on this connection, and sends credit back on it).
                stream = ServerStream(
                    reply.items,
                    reply.call,
                    functools.partial(_send_placed, fd, link),
                    window=reply.window,
                    control=fd,
                )
                del reply
                if not stream.run():
                    return
                continue
            if link is not None:
                # Copied into shared memory, the reply no longer holds the request's
                # buffers (an echo's): the client may use their memory again.
                reply = link.place(reply)
            try:
                send_message(fd, reply)
            except OSError:
                return

    def serve_forever(self, owner_pid: int | None = None) -> None:
        """Like ``managers.Server.serve_forever``, with two changes.

        Helper threads block SIGTERM, so it always reaches the main thread and
        stops the server at once (a process-directed signal taken by another
        thread would wait for the main loop's 1 s poll). And a watchdog thread
        stops the server when ``owner_pid`` exits.
        """
        multiprocessing.current_process()._manager_server = self  # type: ignore[attr-defined]
        on_main = threading.current_thread() is threading.main_thread()
        if on_main:
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            threading.Thread(target=self.accepter, name="rpcgen-accept", daemon=True).start()
            if owner_pid:
                threading.Thread(
                    target=_watch_owner,
                    args=(owner_pid, self.stop_event),
                    name="rpcgen-owner-watch",
                    daemon=True,
                ).start()
        finally:
            if on_main:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        try:
            while not self.stop_event.is_set():
                self.stop_event.wait(1)
        except (KeyboardInterrupt, SystemExit):
            pass
        sys.exit(0)


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _pidfd_open(pid: int) -> int | None:
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except ProcessLookupError:
        return -1
    except OSError:
        return None
    return fd


def _watch_owner(owner_pid: int, stop: threading.Event) -> None:
    """Stop this server when its owner process exits (e.g. it was SIGKILLed)."""
    fd = _pidfd_open(owner_pid)
    if fd is None:  # no pidfd support: poll
        while not stop.wait(0.2):
            try:
                os.kill(owner_pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                continue
    elif fd >= 0:
        select.select([fd], [], [])
        os.close(fd)
    if stop.is_set():
        return
    logger.warning("owner process %d exited; stopping this server", owner_pid)
    stop.set()
    # If the main thread cannot stop in time, leave anyway: an orphan that keeps
    # its port blocks the next start.
    threading.Event().wait(5.0)
    os._exit(1)


def _accept_shared(conn: Link, offered: Any) -> SharedLink | None:
    """The client's shared memory (see .shm), if it offered some and it checks out; never
    under TLS (whoever asked for TLS asked for every frame to be protected)."""
    return None if offered is None or isinstance(conn, TlsStream) else shm.accept(offered)


def _send_placed(fd: Stream, link: SharedLink | None, data: Payload) -> None:
    send_message(fd, data if link is None else link.place(data))


def serve_rpc(
    server: Any,
    address: Address,
    authkey: bytes,
    server_ready: Settable | None,
    *,
    service_name: str,
    owner_pid: int | None = None,
    handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    tls: TlsPolicy | None = None,
    server_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Serve ``server`` on ``address`` until shut down; call it in the server process.

    ``server`` is the object to serve, or a class to instantiate here with
    ``server_kwargs`` (so that an exception in its constructor is reported to the
    parent, not just printed): generated code passes the clients of the services
    the server uses this way.
    ``owner_pid`` is the process whose exit stops this server; by default the
    process that created this one (``multiprocessing.parent_process()``), which is
    right under fork, spawn and forkserver alike. A new connection that does not
    authenticate within ``handshake_timeout_s`` is dropped.

    Server objects are called from several threads at once: BaseManager serves
    each client connection in its own thread, and the calls in flight on one
    asyncio client's connection run concurrently too, up to
    ``max_concurrent_calls`` at a time (more wait their turn). A connection that sends
    a request over ``max_message_bytes`` is dropped before anything is allocated for it.

    ``tls``: when connections use TLS (:mod:`rpcgen.runtime.tls`); by default what the
    owner asked for (it rides on ``server_ready``), else on for an address that is not
    loopback.
    """
    if owner_pid is None:
        parent = multiprocessing.parent_process()
        owner_pid = parent.pid if parent is not None else None
    try:
        if max_concurrent_calls < 1:
            raise ValueError(f"max_concurrent_calls must be at least 1, got {max_concurrent_calls}")
        policy = tls or getattr(server_ready, "tls", None) or TlsPolicy()
        context = policy.server_context(authkey) if policy.applies(address) else None
        if context is None and policy.plaintext_across_hosts(address):
            logger.warning(
                "INSECURE: %s serves %s in plain TCP (tls='insecure-plaintext'): anyone on "
                "the path reads every call and can run code in this server",
                service_name,
                Endpoint.of(address).label,
            )
        if isinstance(server, type):
            server = server(**(server_kwargs or {}))
        elif server_kwargs:
            raise TypeError("serve_rpc(server_kwargs=...) needs a class to instantiate")
        rpc_server = _RPCServer(
            server,
            address,
            authkey,
            service_name,
            handshake_timeout_s,
            max_concurrent_calls,
            max_message_bytes,
            context,
        )
    except BaseException as exc:
        fail = getattr(server_ready, "fail", None)
        if fail is not None:
            fail("".join(traceback.format_exception_only(type(exc), exc)).strip())
        raise
    port = Endpoint.of(cast(Address, rpc_server.address)).port  # TCP: the port bound
    setproctitle.setproctitle(process_title(service_name, port, owner_pid or 0))
    if threading.current_thread() is threading.main_thread():
        # Our owner manages our lifetime: a terminal's Ctrl-C reaches the whole
        # process group, and must not kill servers whose client carries on.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _raise_system_exit)
    if server_ready is not None:
        server_ready.set()
    code = 1
    try:
        rpc_server.serve_forever(owner_pid)
    except SystemExit as stop:  # the normal way out: stop request, SIGTERM, owner gone
        code = stop.code if isinstance(stop.code, int) else 0
    except BaseException:
        traceback.print_exc()
    _fast_exit(code)


def _fast_exit(code: int) -> None:
    """End the server process the way a fork child ends, under every start method.

    multiprocessing's own finalizers run (as they do for every start method), logs
    and stdio are flushed, then ``os._exit``. Skipping interpreter finalization
    saves ~14 ms per stop under spawn. atexit handlers do not run: under fork they
    would be the parent's, and fork children never ran them.
    """
    try:
        exit_function = getattr(mp_util, "_exit_function", None)
        if exit_function is not None:
            exit_function()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    finally:
        os._exit(code)
