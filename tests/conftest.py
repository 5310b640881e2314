from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator

import pytest

from tests.support.ray_cluster import SKIP_NO_RAY, RayNode, ray_installed, start_node
from tests.support.stream_services import Buffers
from tests.support.waiting import free_port

# Projects kept as they were generated (their tests run inside them, not here).
collect_ignore = ["fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    # CI runs one module under each start method (fork, spawn, forkserver: 3.14's default).
    method = os.environ.get("RPCGEN_START_METHOD")
    if method:
        multiprocessing.set_start_method(method, force=True)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(params=["fork", "spawn", "forkserver"])
def buffers(request: pytest.FixtureRequest, port: int) -> Iterator[Buffers]:
    """A started Buffers client (large-data tests), once per start method."""
    client = Buffers(port, start_method=request.param)
    try:
        yield client
    finally:
        client.shutdown()


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayNode]:
    """One local Ray (a head with 2 CPUs) for the whole session; stopped by pid."""
    if not ray_installed():
        pytest.skip(SKIP_NO_RAY)
    node = start_node(num_cpus=2)
    try:
        yield node
    finally:
        node.stop()
