"""Authkey handling, loopback binding, and rejection of bad peers."""

from __future__ import annotations

import logging
import multiprocessing.util
import socket
from typing import Any

import psutil
import pytest

from rpcgen.runtime import ServiceAuthenticationError
from rpcgen.runtime.transport import open_connection
from tests.support.internals import rpc_proxy
from tests.support.services import Echo
from tests.support.waiting import free_port

SEEN_KEYS: dict[int, list[bytes]] = {}


class RecordingEcho(Echo):
    """Records the authkey of each server start (outside the object), as only a test may."""

    @property
    def seen_keys(self) -> list[bytes]:
        return SEEN_KEYS.setdefault(id(self), [])

    def _start_server_process(self, address: Any, authkey: bytes, server_ready: Any) -> Any:
        self.seen_keys.append(authkey)
        return super()._start_server_process(address, authkey, server_ready)


def test_one_random_32_byte_authkey_per_service_kept_across_restarts(port: int) -> None:
    """Kept, so every client reconnects after a restart; random, so not derivable."""
    svc = RecordingEcho(port)
    other = RecordingEcho(free_port())
    try:
        assert svc.restart()
        assert svc.restart()
        keys = list(svc.seen_keys)
        assert len(keys) == 3 and len(set(keys)) == 1
        assert isinstance(keys[0], bytes) and len(keys[0]) == 32
        assert other.seen_keys[0] != keys[0]
        assert svc.rotate_authkey() and svc.seen_keys[-1] not in keys
    finally:
        svc.shutdown()
        other.shutdown()


def _key_forms(key: bytes) -> list[bytes]:
    return [key, key.hex().encode(), repr(key).encode()]


def test_authkey_never_appears_in_logs_reprs_titles_cmdlines_or_environ(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    multiprocessing.util.log_to_stderr(logging.DEBUG)
    try:
        svc = RecordingEcho(port, start_method="spawn")
        try:
            svc.echo(1)
            key = svc.seen_keys[-1]
            texts = [repr(svc), str(svc), repr(vars(svc)), repr(svc._server_proxy)]
            texts += [r.getMessage() for r in caplog.records]
            blobs = [t.encode() for t in texts]
            for pid in (svc.server_pid, psutil.Process().pid):
                assert pid is not None
                for part in ("cmdline", "environ"):
                    with open(f"/proc/{pid}/{part}", "rb") as f:
                        blobs.append(f.read())
            for blob in blobs:
                for form in _key_forms(key):
                    assert form not in blob
        finally:
            svc.shutdown()
    finally:
        logger = multiprocessing.util.get_logger()
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def test_server_binds_loopback_ipv4_by_default(port: int) -> None:
    with Echo(port) as svc:
        server = psutil.Process(svc.server_pid)
        listening = [c for c in server.net_connections() if c.status == psutil.CONN_LISTEN]
        assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", port)]


def test_wrong_authkey_is_rejected_and_the_server_keeps_serving(port: int) -> None:
    with Echo(port) as svc:
        with pytest.raises(ServiceAuthenticationError, match="did not prove that it holds"):
            open_connection(svc.address, b"\0" * 32, service="Echo", timeout_s=5)
        assert svc.echo("still up") == "still up"


def test_garbage_bytes_and_silent_peers_do_not_stop_the_server(port: int) -> None:
    with Echo(port) as svc:
        silent = socket.create_connection((svc.host, svc.port))  # connects, never speaks
        for junk in (b"\xff" * 64, b"GET / HTTP/1.1\r\n\r\n", b"\x00\x00\x00\x04abcd"):
            with socket.create_connection((svc.host, svc.port)) as raw:
                raw.sendall(junk)
        try:
            assert svc.echo("fine") == "fine"
        finally:
            silent.close()
        assert svc.echo("fine again") == "fine again"


def test_client_and_server_sockets_set_tcp_nodelay(port: int) -> None:
    with Echo(port) as svc:
        svc.echo(1)
        proxy = rpc_proxy(svc)
        assert proxy is not None
        conn = next(iter(proxy._rpc_conns))
        with socket.socket(fileno=__import__("os").dup(conn.fileno())) as view:
            assert view.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
