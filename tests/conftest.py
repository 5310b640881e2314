from __future__ import annotations

import multiprocessing
import os

import pytest

from tests.support.waiting import free_port


def pytest_configure(config: pytest.Config) -> None:
    # CI runs one module under each start method (fork, spawn, forkserver: 3.14's default).
    method = os.environ.get("RPCGEN_START_METHOD")
    if method:
        multiprocessing.set_start_method(method, force=True)


@pytest.fixture
def port() -> int:
    return free_port()
