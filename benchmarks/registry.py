"""Registry start: independent services started in parallel vs one after another."""

from __future__ import annotations

import time

from rpcgen.runtime import ServiceGraph, ServiceNode, StartedServices
from rpcgen.runtime.ports import free_port

from ._services import BenchClient
from ._util import Row, median_ms

N_SERVICES = 3


def _graph() -> ServiceGraph:
    return ServiceGraph(
        [ServiceNode(f"Bench{i}", f"bench{i}", BenchClient) for i in range(N_SERVICES)]
    )


def _round(graph: ServiceGraph, parallel: bool, method: str) -> float:
    ports = {name: free_port() for name in graph.nodes}
    start = time.perf_counter()
    started = graph.start(
        StartedServices,
        ports=ports,
        parallel=parallel,
        cleanup_on_signals=False,
        start_method=method,
    )
    elapsed = time.perf_counter() - start
    started.shutdown()
    return elapsed


def run(quick: bool) -> list[Row]:
    rounds = 2 if quick else 8
    graph = _graph()
    rows: list[Row] = []
    for method in ("spawn", "fork"):
        sequential, parallel = [], []
        for _ in range(rounds):  # interleaved: both see the same machine load
            sequential.append(_round(graph, False, method))
            parallel.append(_round(graph, True, method))
        seq_ms, par_ms = median_ms(sequential), median_ms(parallel)
        label = f"start {N_SERVICES} independent services ({method})"
        rows.append(Row("registry", f"{label}, sequential", seq_ms, "ms"))
        rows.append(
            Row(
                "registry",
                f"{label}, parallel",
                par_ms,
                "ms",
                baseline="sequential",
                ratio=par_ms / seq_ms,
            )
        )
    return rows
