"""Ray backend (only when ray is installed): the rpcgen client against a raw Ray actor
call, and against the process backend, all measured in the same run.

Ray is started first, before this process forks or spawns anything (a Ray started
after that was seen to time out its GCS here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import multiprocessing
import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from rpcgen.runtime import RayOptions, ServiceUnavailable
from rpcgen.runtime.constants import DEFAULT_MAX_CONCURRENT_CALLS
from rpcgen.runtime.ports import free_port

from ._services import BenchClient, BenchServer
from ._util import Row, median_ms, timed
from .sharing import NO_FLAP

_spaces = itertools.count(1)


def _ray_client(**kwargs: Any) -> BenchClient:
    space = f"bench-{os.getpid()}-{next(_spaces)}"
    return BenchClient(1, backend="ray", ray_options=RayOptions(namespace=space), **kwargs)


@contextlib.contextmanager
def _local_ray() -> Iterator[Any]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


class RawBench(BenchServer):
    """The same server class, as a plain Ray actor."""


def _interleaved(variants: dict[str, Callable[[], Any]], n: int, blocks: int) -> dict[str, float]:
    """Median of block medians; blocks interleaved, the order rotating each block."""
    names = list(variants)
    medians: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for block in range(blocks):
        order = names[block % len(names) :] + names[: block % len(names)]
        for name in order:
            call, samples = variants[name], []
            for _ in range(n):
                t0 = clock()
                call()
                samples.append(clock() - t0)
            medians[name].append(median_ms(samples))
    return {name: statistics.median(values) for name, values in medians.items()}


def _steady(ray: Any, quick: bool) -> list[Row]:
    raw_cls = ray.remote(RawBench)
    threaded = raw_cls.options(max_concurrency=DEFAULT_MAX_CONCURRENT_CALLS).remote()
    plain = raw_cls.remote()
    ours = _ray_client()
    process = BenchClient(free_port())
    try:
        variants: dict[str, Callable[[], Any]] = {
            "raw Ray actor call (max_concurrency=32, as ours)": lambda: ray.get(
                threaded.echo_rpc.remote(b"x")
            ),
            "raw Ray actor call (Ray's default, max_concurrency=1)": lambda: ray.get(
                plain.echo_rpc.remote(b"x")
            ),
            "rpcgen client, backend=ray": lambda: ours.echo(b"x"),
            "rpcgen client, backend=process": lambda: process.echo(b"x"),
        }
        for call in variants.values():
            for _ in range(50):
                call()
        got = _interleaved(variants, 60 if quick else 400, 2 if quick else 5)
    finally:
        ours.shutdown()
        process.shutdown()
        ray.kill(threaded)
        ray.kill(plain)
    raw = got["raw Ray actor call (max_concurrency=32, as ours)"]
    rows = [Row("ray", f"steady call: {name}", value, "ms") for name, value in got.items()]
    mine = got["rpcgen client, backend=ray"]
    rows.append(
        Row(
            "ray",
            "steady call: rpcgen (ray) vs raw Ray actor call",
            mine / raw,
            "x",
            baseline="raw Ray actor call (max_concurrency=32)",
            ratio=mine / raw,
            target="<= 1.10x",
        )
    )
    rows.append(
        Row(
            "ray",
            "steady call: backend=ray vs backend=process",
            mine / got["rpcgen client, backend=process"],
            "x",
            baseline="rpcgen client, backend=process",
            ratio=mine / got["rpcgen client, backend=process"],
        )
    )
    return rows


def _start(quick: bool) -> list[Row]:
    rounds = 1 if quick else 6
    ray_s, process_s = [], []
    holder: list[BenchClient] = []
    for _ in range(rounds):  # interleaved: drift hits both alike

        def start_ray() -> None:
            client = _ray_client()
            client.echo(1)
            holder.append(client)

        ray_s.append(timed(start_ray))
        holder.pop().shutdown()

        def start_process() -> None:
            client = BenchClient(free_port())
            client.echo(1)
            holder.append(client)

        process_s.append(timed(start_process))
        holder.pop().shutdown()
    r, p = median_ms(ray_s), median_ms(process_s)
    return [
        Row("ray", "start->first call, backend=process", p, "ms"),
        Row(
            "ray",
            "start->first call, backend=ray (Ray already up)",
            r,
            "ms",
            baseline="backend=process",
            ratio=r / p,
        ),
    ]


def _restart_once(client: BenchClient) -> float:
    pid = client._server_proxy.pid_rpc()  # server_pid of a Ray client is the last one seen
    start = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        try:
            if client._server_proxy.pid_rpc() != pid:
                break
        except ServiceUnavailable:  # a call that raced the death: try again
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
    return time.perf_counter() - start


def _restart(quick: bool) -> list[Row]:
    rounds = 1 if quick else 4
    ray_s, process_s = [], []
    actor = _ray_client()
    process = BenchClient(
        free_port(), enable_health_check=True, health_check_interval_s=0, restart_policy=NO_FLAP
    )  # no flap-guard backoff between rounds: each round is one restart
    try:
        for _ in range(rounds):
            ray_s.append(_restart_once(actor))
            process_s.append(_restart_once(process))
    finally:
        actor.shutdown()
        process.shutdown()
    r, p = median_ms(ray_s), median_ms(process_s)
    return [
        Row("ray", "restart after SIGKILL->first call, backend=process", p, "ms"),
        Row(
            "ray",
            "restart after SIGKILL->first call, backend=ray (Ray restarts it)",
            r,
            "ms",
            baseline="backend=process",
            ratio=r / p,
        ),
    ]


def _hammer(client: BenchClient, go: Any, seconds: float, results: Any) -> None:
    """One client process: calls as fast as it can for ``seconds`` after ``go``."""
    client.echo(1)  # connected (a Ray driver joins the cluster here) before the clock
    results.put(("ready", 0))
    go.wait(120)
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        client.echo(b"x")
        count += 1
    results.put(("done", count))


def _throughput(client: BenchClient, processes: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_hammer, args=(client, go, seconds, results)) for _ in range(processes)
    ]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            assert results.get(timeout=120)[0] == "ready"
        go.set()
        total = sum(int(results.get(timeout=seconds + 60)[1]) for _ in workers)
    finally:
        for w in workers:
            w.join(30)
            if w.exitcode is None:
                w.kill()
                w.join(5)
    return total / seconds


def _many_clients(quick: bool) -> list[Row]:
    seconds, processes = (0.5, 2) if quick else (4.0, 4)
    actor = _ray_client()
    process = BenchClient(free_port())
    try:
        r = _throughput(actor, processes, seconds)
        p = _throughput(process, processes, seconds)
    finally:
        actor.shutdown()
        process.shutdown()
    return [
        Row("ray", f"calls/s, {processes} client processes, backend=process", p, "/s"),
        Row(
            "ray",
            f"calls/s, {processes} client processes, backend=ray",
            r,
            "/s",
            baseline="backend=process",
            ratio=r / p,
        ),
    ]


def run(quick: bool) -> list[Row]:
    if importlib.util.find_spec("ray") is None:
        return [Row("ray", "ray: skipped (ray not installed; pip install 'rpcgen[ray]')", 0.0, "")]
    with _local_ray() as ray:
        rows = _steady(ray, quick)
        rows += _start(quick)
        rows += _restart(quick)
        rows += _many_clients(quick)
    return rows
