"""Large arrays across two network namespaces (a veth pair: another "host"): a numpy
array echoed through rpcgen (plain TCP, and TLS), against a raw TCP socket that moves the
same bytes there and back. Servers in namespace A, one client process in namespace B,
interleaved in rounds. Needs root (``ip netns``); without it the rows are left out."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._netns import veth_hosts
from ._raw import recv_into_new
from ._services import BenchClient
from ._util import Row

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"plain": 50211, "tls": 50212, "raw": 50213}


def _raw_server(host: str, port: int) -> None:
    """Echo length-prefixed messages (one connection at a time)."""
    listener = socket.create_server((host, port))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    with conn, contextlib.suppress(EOFError):
        while True:
            head = recv_into_new(conn, 8)
            body = recv_into_new(conn, struct.unpack("!Q", head)[0])
            conn.sendall(head)
            conn.sendall(body)


def _in(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "benchmarks.large_across", *args]


def across(quick: bool) -> list[Row]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    sizes = [16] if quick else [16, 128]
    with tempfile.TemporaryDirectory() as folder, veth_hosts("l", 234) as hosts:
        ns_a, addr_a, ns_b, _ = hosts
        key = Path(folder) / "bench.key"
        server = subprocess.Popen(
            _in(ns_a, "serve", addr_a, str(key)),
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            if not server.stdout.readline().startswith("ready"):
                raise RuntimeError(f"the servers did not start in {ns_a}")
            out = subprocess.run(
                _in(ns_b, "measure", addr_a, str(key), ",".join(map(str, sizes)), str(quick)),
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                check=True,
            )
        finally:
            server.communicate(input="", timeout=60)
    times: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    rows = []
    for mb in sizes:
        raw, plain, tls = (times[f"{kind} {mb}"] for kind in ("raw", "plain", "tls"))
        rows.append(
            Row(
                "large",
                f"echo {mb} MB across the veth pair vs a raw TCP socket",
                plain * 1000,
                "ms",
                baseline=f"raw socket {raw * 1000:.1f} ms",
                ratio=plain / raw,
                target="<= 1.3x",
            )
        )
        rows.append(
            Row(
                "large",
                f"echo {mb} MB across the veth pair, TLS vs plain",
                tls * 1000,
                "ms",
                baseline=f"plain {plain * 1000:.1f} ms",
                ratio=tls / plain,
            )
        )
    return rows


def _serve(host: str, key: str) -> None:
    threading.Thread(target=_raw_server, args=(host, PORTS["raw"]), daemon=True).start()
    with (
        BenchClient(PORTS["plain"], host=host, authkey_file=key, tls="insecure-plaintext"),
        BenchClient(PORTS["tls"], host=host, authkey_file=key),
    ):
        print("ready", flush=True)
        sys.stdin.read()


def _measure(host: str, key: str, sizes: list[int], quick: bool) -> dict[str, float]:
    import numpy as np

    plain = BenchClient.attach(
        host=host, port=PORTS["plain"], authkey_file=key, tls="insecure-plaintext"
    )
    tls = BenchClient.attach(host=host, port=PORTS["tls"], authkey_file=key)
    raw = socket.create_connection((host, PORTS["raw"]))
    rounds = 3 if quick else 7
    times: dict[str, list[float]] = {}
    for mb in sizes:
        array = np.random.default_rng(mb).integers(0, 255, size=mb << 20, dtype=np.uint8)
        data = array.data.cast("B")

        def raw_echo(data: memoryview = data) -> None:
            raw.sendall(struct.pack("!Q", data.nbytes))
            raw.sendall(data)
            head = recv_into_new(raw, 8)
            recv_into_new(raw, struct.unpack("!Q", head)[0])

        variants: dict[str, Callable[[], Any]] = {
            f"raw {mb}": raw_echo,
            f"plain {mb}": functools.partial(plain.echo, array),
            f"tls {mb}": functools.partial(tls.echo, array),
        }
        for call in variants.values():
            call()  # warm up
        for _ in range(rounds):
            for name, call in variants.items():
                start = time.perf_counter()
                call()
                times.setdefault(name, []).append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}


def main() -> None:  # inside a namespace
    import logging

    logging.getLogger("rpcgen").setLevel(logging.ERROR)  # the opt-out's warning is expected
    role = sys.argv[1]
    if role == "serve":
        _serve(sys.argv[2], sys.argv[3])
        return
    sizes = [int(s) for s in sys.argv[4].split(",")]
    print(json.dumps(_measure(sys.argv[2], sys.argv[3], sizes, sys.argv[5] == "True")))


if __name__ == "__main__":
    main()
