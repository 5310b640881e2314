"""Shared services, each against a baseline in the same run:

* attach -> first call (find the service in the directory, read its key, connect,
  call) against a plain connect -> first call with the key already in hand;
* recovery after SIGKILL seen by a client that does not own the server (it waits
  for the owner to publish the restart, then reconnects) against the owner's own
  recovery, both from the kill to the first answered call.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from rpcgen.runtime import RestartPolicy, ServiceUnavailable
from rpcgen.runtime.ports import free_port
from rpcgen.runtime.process_backend import ProcessBackend
from rpcgen.runtime.proxy import RPCProxy

from ._services import BenchClient
from ._util import Row, median_ms

NO_FLAP = RestartPolicy(backoff_initial_s=0.001, backoff_max_s=0.01, flap_max_restarts=10**6)


def _plain_connect(owner: BenchClient) -> float:
    backend = owner._rpc_backend
    assert isinstance(backend, ProcessBackend)
    key = backend.key()
    start = time.perf_counter()
    proxy = RPCProxy(service="Bench", address=owner.address, authkey=key)
    proxy.echo_rpc(1)
    elapsed = time.perf_counter() - start
    proxy._rpc_close()
    return elapsed


def _attach(owner: BenchClient) -> float:
    start = time.perf_counter()
    client = BenchClient.attach(port=owner.port, service_name="Bench")
    client.echo(1)
    elapsed = time.perf_counter() - start
    client.shutdown()
    return elapsed


def _recovery(owner: BenchClient, caller: Callable[[], Any]) -> float:
    pid = owner.server_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    start = time.perf_counter()
    deadline = time.monotonic() + 45  # room for a start timeout and a second attempt
    while True:
        try:
            caller()
            return time.perf_counter() - start
        except ServiceUnavailable:
            if time.monotonic() > deadline:
                raise


def run(quick: bool) -> list[Row]:
    rounds = 5 if quick else 40
    owner = BenchClient(free_port(), enable_health_check=True, restart_policy=NO_FLAP)
    try:
        plain, attached = [], []
        for _ in range(rounds):  # interleaved, so drift hits both alike
            plain.append(_plain_connect(owner))
            attached.append(_attach(owner))
        follower = BenchClient.attach(port=owner.port, service_name="Bench")
        owners, followers = [], []
        for _ in range(max(3, rounds // 4)):
            owners.append(_recovery(owner, lambda: owner.echo(1)))
            followers.append(_recovery(owner, lambda: follower.echo(1)))
        follower.shutdown()
    finally:
        owner.shutdown()
    p, a = median_ms(plain), median_ms(attached)
    o, f = median_ms(owners), median_ms(followers)
    return [
        Row("sharing", "plain connect->first call (key in hand)", p, "ms"),
        Row(
            "sharing",
            "attach->first call",
            a,
            "ms",
            baseline="plain connect",
            ratio=a / p,
            target="<= 1.5x",
        ),
        Row("sharing", "recovery after SIGKILL, owner (kill->first call)", o, "ms"),
        Row(
            "sharing",
            "recovery after SIGKILL, non-owner (kill->first call)",
            f,
            "ms",
            baseline="owner's recovery",
            ratio=f / o,
            target="<= 2x",
        ),
    ]
