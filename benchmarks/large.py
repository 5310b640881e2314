"""Large arrays: a numpy array of 1, 16, 128 and 512 MB echoed through a server method,
against two ``memcpy``s of the same array (the floor: the bytes cross twice), rpcgen
without shared memory (out-of-band buffers on the socket), the path before out-of-band
buffers (every buffer inside the pickle, same run, same code), a raw BaseManager proxy
and a Ray actor (both with their defaults). Medians of a few rounds,
interleaved; one core each side (unpinned). Needs numpy; Ray rows need the ray extra."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from rpcgen.runtime.ports import free_port

from ._netns import NetnsUnavailable
from ._services import BenchClient, BenchServer, InBandBenchClient, StockManager
from ._util import Row
from .large_across import across

SIZES_MB = (1, 16, 128, 512)


def _median_s(call: Callable[[], Any], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _two_copies(np: Any, array: Any) -> Callable[[], Any]:
    a, b = np.empty_like(array), np.empty_like(array)
    a[:] = 1  # touched before: a memcpy into fresh pages would count their faults
    b[:] = 1

    def copy() -> None:
        np.copyto(a, array)
        np.copyto(b, a)

    return copy


@contextlib.contextmanager
def _ray_echo() -> Iterator[Callable[[Any], Any] | None]:
    if importlib.util.find_spec("ray") is None:
        yield None
        return
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        actor: Any = ray.remote(BenchServer).remote()
        yield lambda value: ray.get(actor.echo_rpc.remote(value))
    finally:
        ray.shutdown()


def run(quick: bool) -> list[Row]:
    if importlib.util.find_spec("numpy") is None:
        return [Row("large", "large arrays: skipped (numpy not installed)", 0.0, "")]
    import numpy as np

    sizes = SIZES_MB[:2] if quick else SIZES_MB
    rounds = 2 if quick else 5
    times: dict[tuple[str, int], float] = {}
    client = BenchClient(free_port())
    socket_only = BenchClient(free_port(), shared_memory_bytes=0)
    in_band = InBandBenchClient(free_port(), shared_memory_bytes=0)
    stock = StockManager(address=("127.0.0.1", 0), authkey=os.urandom(32))
    stock.start()
    try:
        stock_proxy = stock.BenchServer()  # type: ignore[attr-defined]
        for mb in sizes:
            array = np.random.default_rng(mb).integers(0, 255, size=mb << 20, dtype=np.uint8)
            variants: dict[str, Callable[[], Any]] = {
                "rpcgen": functools.partial(client.echo, array),
                "socket": functools.partial(socket_only.echo, array),
                "in-band pickle": functools.partial(in_band.echo, array),
                "BaseManager": functools.partial(stock_proxy.echo_rpc, array),
                "memcpy x2": _two_copies(np, array),
            }
            for call in variants.values():
                call()  # warm up
            for name, call in variants.items():
                times[(name, mb)] = _median_s(call, rounds)
            del variants, array
    finally:
        client.shutdown()
        socket_only.shutdown()
        in_band.shutdown()
        stock.shutdown()
    with _ray_echo() as ray_echo:
        if ray_echo is not None:
            for mb in sizes:
                array = np.random.default_rng(mb).integers(0, 255, size=mb << 20, dtype=np.uint8)
                ray_echo(array)
                times[("Ray", mb)] = _median_s(functools.partial(ray_echo, array), rounds)
    rows = _rows(sizes, times)
    try:
        rows += across(quick)
    except NetnsUnavailable as exc:
        print(f"large: the namespace-pair rows are left out: {exc}", file=sys.stderr)
    return rows


def _rows(sizes: tuple[int, ...], times: dict[tuple[str, int], float]) -> list[Row]:
    rows = []
    for mb in sizes:
        ours = times[("rpcgen", mb)]
        aim = "<= 4x" if mb == 1 else "<= 2x"
        rows.append(
            Row(
                "large",
                f"echo {mb} MB numpy array vs two memcpys",
                ours * 1000,
                "ms",
                baseline=f"memcpy x2 {times[('memcpy x2', mb)] * 1000:.1f} ms",
                ratio=ours / times[("memcpy x2", mb)],
                target=aim,
            )
        )
        slower = (  # the same echo by older paths: how many times slower than rpcgen
            ("socket", "the socket path (no shared memory)", None),
            (
                "in-band pickle",
                "in-band pickle (the old path)",
                ">= 5x faster" if mb >= 16 else None,
            ),
        )
        for key, label, target in slower:
            rows.append(
                Row(
                    "large",
                    f"echo {mb} MB: {label} / rpcgen",
                    ours * 1000,
                    "ms",
                    baseline=f"{key} {times[(key, mb)] * 1000:.1f} ms",
                    ratio=times[(key, mb)] / ours,
                    target=target,
                )
            )
        for peer in ("BaseManager", "Ray"):
            if (peer, mb) in times:
                rows.append(
                    Row(
                        "large",
                        f"echo {mb} MB: rpcgen vs {peer}",
                        ours * 1000,
                        "ms",
                        baseline=f"{peer} {times[(peer, mb)] * 1000:.1f} ms",
                        ratio=ours / times[(peer, mb)],
                    )
                )
    return rows
