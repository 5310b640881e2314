"""The process backend: the server object in a process of its own on this host.

The owner starts the server process (through the client's
``_start_server_process``), waits until it is ready, connects, and publishes it
in the service directory with its key; it restarts it at once when the process
dies (a :class:`~rpcgen.runtime.supervise.ProcessWatcher`) and stops it on
shutdown. Any other client (attached, unpickled, forked) follows the server
through the directory: when its connection fails it waits for the owner to
publish the restarted server, then reconnects with the same key.

It is given plain settings and callables, never the client object.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import time
from collections.abc import Callable
from multiprocessing import process as mp_process
from multiprocessing.process import BaseProcess
from pathlib import Path

from . import directory, keyfile
from .announce import ReadySignal
from .backend import ServerRef
from .endpoint import Address, Endpoint
from .errors import ServiceUnavailable, StockServerFound
from .health import FailureKind
from .lifecycle import Lifecycle
from .poll import retry
from .process import (
    cleanup_stale,
    listens,
    stop_process,
    wait_address_free,
    wait_until_ready,
)
from .proxy import RPCProxy
from .settings import ServiceSettings
from .sharing import Located, stop_hung_server, wait_until_published
from .supervise import Probe, ProcessWatcher, judge_health
from .transport import request_shutdown

__all__ = ["ProcessBackend", "Secret"]

StartProcess = Callable[[Address, bytes, ReadySignal], BaseProcess]


class Secret:
    """Holds the authkey so that no repr, log line or vars() dump shows it."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"


class ProcessBackend:
    """The :class:`~rpcgen.runtime.backend.Backend` of a service in its own process."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        life: Lifecycle,
        start_process: StartProcess,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.life = life
        self.start_process = start_process
        self.log = log
        self.clock = clock
        self.sleep = sleep
        self.process: BaseProcess | None = None
        self.proxy: RPCProxy | None = None
        self.server: ServerRef = (0, 0)
        self._key: Secret | None = None
        self._watcher: ProcessWatcher | None = None
        self._on_exit: Callable[[str, ServerRef], None] | None = None

    @property
    def calls(self) -> RPCProxy | None:
        return self.proxy

    @property
    def label(self) -> str:
        return self.settings.endpoint.label

    # -- the key and the directory ---------------------------------------------------

    def key(self) -> bytes:
        """The service's key: made (or read from ``authkey_file``) once, kept across restarts.

        Made in memory: the directory's key file is written with the entry, once
        this process's server is ready, so a start that loses a race for the port
        never touches the winner's key file.
        """
        if self._key is None:
            if self.settings.authkey_file is not None:
                key = keyfile.create_key_file(self.settings.authkey_file)
            else:
                key = secrets.token_bytes(keyfile.KEY_BYTES)
            self._key = Secret(key)
        return self._key.value

    def _key_path(self) -> Path:
        if self.settings.authkey_file is not None:
            return Path(self.settings.authkey_file)
        return directory.directory_folder() / f"{self.settings.service}-{self.settings.port}.key"

    def forget_key(self) -> None:
        """Drop the key; remove the directory's key file only if it still holds ours."""
        if self.settings.authkey_file is None and self._key is not None:
            with contextlib.suppress(OSError):  # KeyFileError too: then it is not ours
                path = self._key_path()
                if keyfile.read_key(path) == self._key.value:
                    path.unlink()
        self._key = None

    def rotate_key(self) -> None:
        self.forget_key()

    def _publish(self, process: BaseProcess) -> None:
        import psutil

        settings = self.settings
        pid = int(process.pid or 0)
        generation = self.server[1] + 1
        try:
            directory.directory_folder()
        except OSError as exc:  # e.g. another user made /tmp/rpcgen-<uid>: never write there
            self.log.warning(
                "%s: not published in the service directory (%s): attach() cannot find it",
                settings.service,
                exc,
            )
            self.server = (pid, generation)
            return
        if settings.authkey_file is None:  # the key first: an entry never names a missing key
            directory.write_service_key(settings.service, settings.port, self.key())
        directory.publish(
            directory.DirectoryEntry(
                service=settings.service,
                host=settings.host,
                port=settings.port,
                # numeric, as the server bound it: attach() dials exactly that
                address=settings.endpoint.path or list(settings.endpoint.numeric().address),
                pid=pid,
                create_time=psutil.Process(pid).create_time(),
                owner_pid=os.getpid(),
                generation=generation,
                key_file=str(self._key_path()),
                start_ticks=(directory.proc_stat(pid) or ("", 0))[1],
            )
        )
        self.server = (pid, generation)

    def _follow_directory(self, timeout_s: float) -> bool:
        """Non-owner: wait (bounded) until the server is published live; note a restart."""
        settings = self.settings
        if not settings.on_this_host:
            return True  # another host: no directory here; connecting is the only test
        try:
            entry = wait_until_published(settings.service, settings.port, timeout_s)
        except OSError:
            return True  # no usable directory: connecting (same key) is the only test
        if entry is None:
            return False
        if (entry.pid, entry.generation) != self.server:
            self.server = (entry.pid, entry.generation)
            proxy = self.proxy
            key = keyfile.read_key(entry.key_file)
            if proxy is not None and self._key is not None and key != self._key.value:
                self._key = Secret(key)  # rotated by its owner
                proxy._rpc_rebind(settings.endpoint.address, key)
        return True

    # -- start and stop (owner) ------------------------------------------------------

    def _new_proxy(self, key: bytes) -> RPCProxy:
        return RPCProxy(
            service=self.settings.service,
            address=self.settings.endpoint.address,
            authkey=key,
            connect_timeout_s=self.settings.connect_timeout_s,
            max_message_bytes=self.settings.max_message_bytes,
            tls=self.settings.tls,
            call_timeout_s=self.settings.call_timeout_s,
            idempotent=self.settings.idempotent,
            stream_window=self.settings.stream_window,
            shared_memory_bytes=self.settings.shared_memory_bytes,
            wait_ready=(
                self.life.not_restarting.wait if self.life.is_owner else self._follow_directory
            ),
        )

    def start(self) -> int | None:
        settings = self.settings
        address = settings.endpoint.address
        cleanup_stale(
            settings.service,
            address,
            timeout_s=settings.shutdown_timeout_s,
            logger=self.log,
            clock=self.clock,
            sleep=self.sleep,
        )
        authkey = self.key()
        ready = ReadySignal(multiprocessing.get_context(settings.start_method))
        ready.tls = settings.tls  # for serve_rpc, which the server process calls
        try:
            process = self.start_process(address, authkey, ready)
            ready.close_writer()
            try:
                wait_until_ready(
                    process,
                    ready,
                    service=settings.service,
                    port=settings.port,
                    timeout_s=settings.start_timeout_s,
                    clock=self.clock,
                )
            except BaseException:
                if process.exitcode is None:
                    stop_process(
                        process, join_timeout_s=settings.shutdown_timeout_s, logger=self.log
                    )
                process.close()
                raise
        finally:
            ready.close()
        self.process = process
        # The new pid at once (server_pid shows it while the restart finishes); the
        # generation goes up when it is published.
        self.server = (int(process.pid or 0), self.server[1])
        if self.proxy is None:
            self.proxy = self._new_proxy(authkey)
        else:
            self.proxy._rpc_rebind(address, authkey)
        self.log.info("%s server started (pid %s) on %s", settings.service, process.pid, self.label)
        try:
            stock = self.proxy._rpc_stock
            if stock is not None and not listens(int(process.pid or 0), address):
                raise StockServerFound(
                    service=settings.service, host=settings.host, port=settings.port
                )
            try:
                self.connect(self.proxy, process, settings.connect_timeout_s)
            except StockServerFound:
                # The server built its own BaseManager (upstream's way). Talk to it the
                # stock way, but only if the listener is the process we just started.
                if not listens(int(process.pid or 0), address):
                    raise
                self.proxy._rpc_use_stock(settings.service)
                self.connect(self.proxy, process, settings.connect_timeout_s)
            self._publish(process)
        except BaseException:
            self._stop_process()
            raise
        if self._watcher is not None:
            self._watcher.wake()  # watch the new process
        return process.pid

    def connect(self, proxy: RPCProxy, process: BaseProcess | None, timeout_s: float) -> None:
        """Open this thread's connection, retrying with backoff under a deadline that
        bounds each attempt's handshake too."""
        retry(
            # wait_ready=False: we are the start (or attach): nothing to wait for
            lambda remaining: proxy._rpc_connect(wait_ready=False, timeout_s=remaining),
            retry_on=ServiceUnavailable,
            timeout_s=timeout_s,
            clock=self.clock,
            sleep=self.sleep,
            give_up=lambda: process is not None and process.exitcode is not None,
        )

    def stop(self) -> None:
        """Owner: stop the server for good (shutdown, or a failed start); drop its key."""
        self._stop_process()
        self.forget_key()

    def _stop_process(self) -> None:
        process, self.process = self.process, None
        if process is None or not self.life.is_owner:
            return
        settings = self.settings
        authkey = self._key.value if self._key else None
        address = settings.endpoint.address

        stock = self.proxy._rpc_stock if self.proxy is not None else None

        def graceful() -> None:
            if stock is not None:
                stock.shutdown_server(settings.shutdown_timeout_s)
            elif authkey is not None:
                request_shutdown(
                    address,
                    authkey,
                    service=settings.service,
                    timeout_s=settings.shutdown_timeout_s,
                    tls=settings.tls,
                )

        code = stop_process(
            process,
            join_timeout_s=settings.shutdown_timeout_s,
            graceful=graceful,
            logger=self.log,
        )
        self.log.debug("%s server pid %s exited with %s", settings.service, process.pid, code)
        with contextlib.suppress(OSError):  # an unusable directory was never written to
            directory.withdraw(settings.service, settings.port, int(process.pid or 0))
        process.close()
        if not wait_address_free(
            address, timeout_s=settings.shutdown_timeout_s, clock=self.clock, sleep=self.sleep
        ):
            self.log.warning("%s still busy after %s stopped", address, settings.service)
        else:  # the server was killed before it could remove its socket file
            Endpoint.of(address).remove_file()

    def restart_once(self) -> int | None:
        self._stop_process()  # the key stays: clients that follow the server reconnect with it
        return self.start()

    # -- health ----------------------------------------------------------------------

    def probe(self) -> Probe:
        life = self.life
        server = self.server
        owner = life.is_owner
        if owner and not life.not_restarting.is_set():
            # The watcher is restarting a dead server: judge the new one.
            life.not_restarting.wait(
                self.settings.start_timeout_s + self.settings.connect_timeout_s
            )
            server = self.server
        gone = self.process_gone(0.0) if owner else None
        if gone is not None:
            return Probe(FailureKind.TRANSPORT, gone, True, server=server)
        proxy = self.proxy
        if proxy is None:
            return Probe(
                FailureKind.TRANSPORT, f"service is {life.state.value}", True, server=server
            )
        # A reset connection usually means the process is dying. After SIGKILL the
        # thread-group leader shows as a zombie before its other threads are gone,
        # and cannot be reaped until they are: give it a moment, then look again.
        return judge_health(
            lambda: proxy._rpc_call("health_check_rpc", timeout_s=self.settings.check_timeout_s),
            server=server,
            gone=(lambda: self.process_gone(0.2)) if owner else None,
        )

    def process_gone(self, wait_s: float) -> str | None:
        """Owner: why its server process is gone, or None if it runs (or is busy).

        Only under the lifecycle lock, never beside the watcher or a restart: two
        threads waiting on one child race in waitpid (one reaps it, the other gets
        ECHILD and takes it for alive), and Process.close() then fails.
        """
        if not self.life.lock.acquire(timeout=self.settings.check_timeout_s):
            return None  # a restart holds it: judge the new server next time
        try:
            process = self.process
            if process is not None and wait_s:
                process.join(wait_s)
            code = process.exitcode if process is not None else None
            if process is not None and code is None:
                return None
            return f"server process is gone (exit code {code})"
        finally:
            self.life.lock.release()

    def on_unhealthy(self, reason: str) -> bool:
        """A client that does not own the server: stop a hung server (its owner restarts it)."""
        settings = self.settings
        if not settings.on_this_host:
            self.log.warning("%s on another host is unhealthy: %s", settings.service, reason)
            return False
        return stop_hung_server(
            settings.service,
            settings.port,
            timeout_s=settings.shutdown_timeout_s,
            log=self.log,
            clock=self.clock,
            sleep=self.sleep,
        )

    # -- the watcher (owner) ---------------------------------------------------------

    def watch(self, on_exit: Callable[[str, ServerRef], None]) -> None:
        """Owner: a thread that calls ``on_exit`` as soon as the server process dies."""
        if self._watcher is None and self.life.is_owner:
            self._on_exit = on_exit
            self._watcher = ProcessWatcher(self, self.settings.service)

    def unwatch(self, timeout_s: float) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop(timeout_s)

    def watch_target(self) -> tuple[BaseProcess, int] | None:
        """The server process and its sentinel, read together under the lifecycle lock
        (a restart closes the old process object)."""
        with self.life.lock:
            process = self.process
            if process is None or not self.life.running:
                return None
            return process, process.sentinel

    def process_exited(self, process: BaseProcess) -> None:
        with self.life.lock:
            if process is not self.process or not self.life.running:
                return  # stopped or restarted meanwhile
            code, seen = process.exitcode, self.server
        if self._on_exit is not None:
            self._on_exit(f"server process exited (exit code {code})", seen)

    # -- other clients ---------------------------------------------------------------

    def handoff(self) -> tuple[Secret | None, ServerRef]:
        return self._key, self.server

    def follow(self, handoff: tuple[Secret | None, ServerRef]) -> None:
        key, self.server = handoff
        assert key is not None, "a client is handed off only while running"
        self._key = key
        self.proxy = self._new_proxy(key.value)

    def attach(self, found: Located | None, timeout_s: float) -> None:
        """Follow the server ``attach()`` found; connect within ``timeout_s``."""
        assert found is not None, "attach() locates a process-backed service first"
        entry = found.entry
        self.follow((Secret(found.key), (entry.pid, entry.generation) if entry else (0, 0)))
        assert self.proxy is not None
        self.connect(self.proxy, None, timeout_s)  # a restart under way: wait for it

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy._rpc_close()

    def after_fork(self) -> None:
        # os.fork() copies multiprocessing's set of children; if this child later exits
        # normally, multiprocessing's atexit terminates every daemonic "child" in it,
        # i.e. the parent's server. It is not ours to stop.
        if self.process is not None:
            mp_process._children.discard(self.process)  # type: ignore[attr-defined]
        watcher, self._watcher = self._watcher, None
        if watcher is not None:  # its thread is not in this process; its pipe is a copy
            watcher.stop(0)
        if self.proxy is not None:
            self.proxy._rpc_wait_with(self._follow_directory)
