"""What TLS costs: across two network namespaces (a veth pair: another "host") and on
loopback, against plain TCP to the same kind of server, in one run.

Across the pair: two servers in namespace A (one with TLS, as a non-loopback bind gets
by itself; one with ``tls="insecure-plaintext"``), and one client process in namespace B
that times both, interleaved in rounds. Needs root (``ip netns``); without it those rows
are left out, with a message. On loopback: the default (plain, the handshake bound to
the address) against ``tls="on"``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing import connection
from pathlib import Path
from typing import Any

from rpcgen.runtime.ports import free_port
from rpcgen.runtime.process_backend import ProcessBackend
from rpcgen.runtime.proxy import RPCProxy
from rpcgen.runtime.tls import TlsPolicy

from ._netns import NetnsUnavailable, veth_hosts
from ._raw import serve_connection
from ._services import BenchClient
from ._util import Row, median_ms, timed
from .calls import PIN, _process, pinned

ROOT = Path(__file__).resolve().parent.parent
MB = os.urandom(1 << 20)


def _time(clients: dict[str, Any], rounds: int, calls: int, kind: str) -> dict[str, float]:
    """Median seconds per small call (``kind`` "small") or per 1 MB echo ("mb"), for each
    client, interleaved round by round."""
    payload: Any = MB if kind == "mb" else 1
    count = max(1, calls // 50) if kind == "mb" else calls
    samples: dict[str, list[float]] = {name: [] for name in clients}
    for client in clients.values():
        for _ in range(5 if kind == "mb" else 50):
            client.echo(payload)
    for _ in range(rounds):
        for name, client in clients.items():
            start = time.perf_counter()
            for _ in range(count):
                client.echo(payload)
            samples[name].append((time.perf_counter() - start) / count)
    return {name: sorted(values)[len(values) // 2] for name, values in samples.items()}


def _rows(where: str, small: dict[str, float], mb: dict[str, float]) -> list[Row]:
    delta_us = (small["tls"] - small["plain"]) * 1e6
    return [
        Row("tls", f"{where}: plain TCP, small call (one core)", small["plain"] * 1e6, "us"),
        Row(
            "tls",
            f"{where}: TLS, small call (one core)",
            small["tls"] * 1e6,
            "us",
            baseline="plain TCP",
            ratio=small["tls"] / small["plain"],
            extra={"added_us": delta_us},
        ),
        Row("tls", f"{where}: TLS, added per small call", delta_us, "us", target="<= 25 us"),
        Row("tls", f"{where}: plain TCP, 1 MB echo (both cores)", mb["plain"] * 1e3, "ms"),
        Row(
            "tls",
            f"{where}: TLS, 1 MB echo (both cores)",
            mb["tls"] * 1e3,
            "ms",
            baseline="plain TCP",
            ratio=mb["tls"] / mb["plain"],
            target="<= 1.3x plain",
        ),
    ]


def _rounds(quick: bool) -> tuple[int, int]:
    return (3, 200) if quick else (9, 1000)


def _loopback(quick: bool) -> list[Row]:
    def measure(kind: str) -> dict[str, float]:
        clients = {"plain": BenchClient(free_port()), "tls": BenchClient(free_port(), tls="on")}
        try:
            return _time(clients, *_rounds(quick), kind)
        finally:
            for client in clients.values():
                client.shutdown()

    with pinned(PIN):  # the servers started inside inherit the core
        small = measure("small")
    return _rows("loopback", small, measure("mb"))


def _connect_rows(quick: bool) -> list[Row]:
    """Connect, authenticate and make one call: what the loopback handshake (the server
    proves first, bound to the address) and TLS's setup cost, against multiprocessing's
    own challenge (a raw ``multiprocessing.connection`` echo server)."""
    key_raw = secrets.token_bytes(32)
    raw_address = ("127.0.0.1", free_port())
    plain = BenchClient(free_port())
    secure = BenchClient(free_port(), tls="on")

    def ours(client: BenchClient, policy: TlsPolicy) -> Callable[[], None]:
        backend = client._rpc_backend
        assert isinstance(backend, ProcessBackend)
        key = backend.key()

        def once() -> None:
            proxy = RPCProxy(service="Bench", address=client.address, authkey=key, tls=policy)
            proxy.echo_rpc(1)
            proxy._rpc_close()

        return once

    def raw() -> None:
        with connection.Client(raw_address, authkey=key_raw) as conn:
            conn.send(1)
            conn.recv()

    variants = {
        "raw": raw,
        "plain": ours(plain, TlsPolicy()),
        "tls": ours(secure, TlsPolicy("on")),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    try:
        with _process(serve_connection, raw_address, key_raw):
            for _ in range(3 if quick else 15):
                for name, once in variants.items():
                    for _ in range(10 if quick else 40):
                        samples[name].append(timed(once))
    finally:
        plain.shutdown()
        secure.shutdown()
    raw_ms, plain_ms, tls_ms = (median_ms(samples[name]) for name in ("raw", "plain", "tls"))
    return [
        Row("tls", "loopback connect + first call: multiprocessing's challenge", raw_ms, "ms"),
        Row(
            "tls",
            "loopback connect + first call: rpcgen (server proves first)",
            plain_ms,
            "ms",
            baseline="multiprocessing's challenge",
            ratio=plain_ms / raw_ms,
        ),
        Row(
            "tls",
            "loopback connect + first call: rpcgen with TLS",
            tls_ms,
            "ms",
            baseline="rpcgen without TLS",
            ratio=tls_ms / plain_ms,
        ),
    ]


def _in(ns: str, *args: str, pin: bool = False) -> list[str]:
    # Pinned: every process on one core, as for the loopback rows (a cross-core wake-up on
    # this kind of VM costs more than what is measured; see calls.pinned).
    core = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] if pin and PIN else []
    return ["ip", "netns", "exec", ns, *core, sys.executable, "-m", "benchmarks.tls", *args]


def _across(quick: bool) -> list[Row]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    with tempfile.TemporaryDirectory() as folder, veth_hosts("b", 233) as hosts:
        ns_a, addr_a, ns_b, _ = hosts
        key = Path(folder) / "bench.key"

        def measure(kind: str) -> dict[str, float]:
            pin = kind == "small"
            servers = []
            try:
                for port, mode in ((50201, "auto"), (50202, "insecure-plaintext")):
                    server = subprocess.Popen(
                        _in(ns_a, "serve", addr_a, str(port), str(key), mode, pin=pin),
                        cwd=ROOT,
                        env=env,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    servers.append(server)
                    assert server.stdout is not None
                    if not server.stdout.readline().startswith("ready"):
                        raise RuntimeError(f"the {mode} server did not start in {ns_a}")
                out = subprocess.run(
                    _in(ns_b, "measure", addr_a, str(key), kind, str(quick), pin=pin),
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=True,
                )
            finally:
                for server in servers:
                    server.communicate(input="", timeout=60)
            result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
            return result

        small = measure("small")
        mb = measure("mb")
    return _rows("veth pair", small, mb)


def run(quick: bool) -> list[Row]:
    rows = _loopback(quick)
    with pinned(PIN):
        rows += _connect_rows(quick)
    try:
        rows += _across(quick)
    except NetnsUnavailable as exc:
        print(f"tls: the namespace-pair rows are left out: {exc}", file=sys.stderr)
    return rows


def main() -> None:  # inside a namespace
    import logging

    logging.getLogger("rpcgen").setLevel(logging.ERROR)  # the opt-out's warning is expected
    role = sys.argv[1]
    if role == "serve":
        host, port, key, mode = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
        with BenchClient(port, host=host, authkey_file=key, tls=mode):
            print("ready", flush=True)
            sys.stdin.read()
        return
    host, key, kind, quick = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "True"
    clients = {
        "tls": BenchClient.attach(host=host, port=50201, authkey_file=key),
        "plain": BenchClient.attach(
            host=host, port=50202, authkey_file=key, tls="insecure-plaintext"
        ),
    }
    print(json.dumps(_time(clients, *_rounds(quick), kind)))


if __name__ == "__main__":
    main()
