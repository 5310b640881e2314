"""Ray backend scenarios, each run as its own program (a Ray driver) by the tests.

``python -m tests.support.ray_scenarios NAME NAMESPACE [ARGS...]`` prints one line
``RESULT <json>`` (and ``READY <json>`` first, for the long-running ``owner``).
The test process itself never connects to Ray: a driver's threads must not be
forked by the rest of the suite's servers.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from rpcgen.runtime import (
    RayOptions,
    ServiceUnavailable,
)
from tests.support.notifiers import RecordingNotifier
from tests.support.ray_services import Broken, RayBuffers, RayStreams, Reader, Relay
from tests.support.services import Echo
from tests.support.waiting import free_port


def _emit(tag: str, value: Any) -> None:
    print(f"{tag} {json.dumps(value, default=repr)}", flush=True)


def _error(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = call()
    except BaseException as exc:
        try:
            copy: Any = pickle.loads(pickle.dumps(exc))
        except Exception:  # some classes cannot round-trip pickle at all (NeedsArgsError)
            copy = None
        return {
            "type": type(exc).__name__,
            "message": str(exc),
            "cause": type(exc.__cause__).__name__ if exc.__cause__ else None,
            "pickled_type": type(copy).__name__,
            "attrs": {k: v for k, v in vars(exc).items() if isinstance(v, (int, str))},
        }
    return {"returned": repr(value)}


def _echo(ns: str, **kwargs: Any) -> Echo:
    kwargs.setdefault("ray_options", RayOptions(namespace=ns))
    return Echo(1, name="Echo", backend="ray", **kwargs)


def _child_call(client: Echo, results: Any) -> None:
    # A spawned program: the pickled client finds Ray and the actor by itself.
    results.put((client.add(40, 2), client.server_pid))


def basic(ns: str) -> dict[str, Any]:
    c = _echo(ns, enable_health_check=True, health_check_interval_s=0.001)
    out: dict[str, Any] = {
        "state": c.state.value,
        "pid": c.server_pid,
        "remote_pid": c.remote_pid(),
        "add": c.add(2, 3),
        "echo": c.echo({"a": [1, 2]}),
        "repr": repr(c),
        "health": c.health_check(),
    }
    proxy: Any = c._server_proxy
    out["boom"] = _error(lambda: proxy.boom_rpc("bad input"))
    out["needs_args"] = _error(proxy.needs_args_error_rpc)
    out["local_class"] = _error(proxy.local_class_error_rpc)
    out["service_error"] = _error(proxy.service_error_rpc)
    out["private"] = _error(lambda: proxy._rpc_call("_private_thing"))
    out["missing"] = _error(proxy.no_such_rpc)
    out["unpicklable"] = _error(proxy.unpicklable_rpc)
    out["after_errors"] = c.add(1, 1)

    async def concurrently() -> dict[str, Any]:
        adds = await asyncio.gather(*(c.aio.add(i, 1) for i in range(20)))
        # Four calls that return only when all four run at once: max_concurrency > 1.
        meet = await asyncio.gather(*(c.aio.rendezvous(f"{ns}-k", 4, 10.0) for _ in range(4)))
        boom = None
        try:
            await c.aio.boom("async bad")
        except ValueError as exc:
            boom = [type(exc).__name__, str(exc), type(exc.__cause__).__name__]
        return {"adds": adds, "meet": sorted(meet), "boom": boom}

    out["aio"] = asyncio.run(concurrently())
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_child_call, args=(c, results))
    child.start()
    out["spawned_child"] = list(results.get(timeout=60))
    child.join(30)
    c.shutdown()
    out["after_shutdown"] = _error(lambda: c.add(1, 2))
    out["attach_after_shutdown"] = _error(
        lambda: Echo.attach(
            service_name="Echo", backend="ray", ray_options=RayOptions(namespace=ns), timeout_s=0.5
        )
    )
    return out


def sigkill(ns: str) -> dict[str, Any]:
    notes = RecordingNotifier()
    c = _echo(ns, enable_health_check=True, health_check_interval_s=0.001, notifier=notes)
    old = c.server_pid
    assert old is not None and c.remote_pid() == old
    os.kill(old, signal.SIGKILL)
    errors: list[str] = []
    deadline = time.monotonic() + 60
    new = old
    while time.monotonic() < deadline:
        try:
            new = c.remote_pid()
            if new != old:
                break
        except ServiceUnavailable as exc:
            errors.append(type(exc).__name__)
        time.sleep(0.05)
    healthy = c.health_check()
    c.flush_notifications()
    out = {
        "old": old,
        "new": new,
        "server_pid": c.server_pid,
        "errors": sorted(set(errors)),
        "healthy": healthy,
        "calls": c.add(20, 22),
        "notes": notes.texts(),
    }
    c.shutdown()
    return out


def unhealthy(ns: str) -> dict[str, Any]:
    """Failing health checks: the owner kills the actor, Ray restarts it."""
    notes = RecordingNotifier()
    c = _echo(
        ns,
        enable_health_check=True,
        health_check_interval_s=0.001,
        max_consecutive_failures=2,
        notifier=notes,
    )
    old = c.server_pid
    c._server_proxy.set_healthy_rpc(False)
    results = []
    for _ in range(2):
        time.sleep(0.002)  # past the rate limit (1 ms)
        results.append(c.health_check())
    c.flush_notifications()
    out = {
        "old": old,
        "new": c.server_pid,
        "remote_pid": c.remote_pid(),
        "results": results,
        "state": c.state.value,
        "healthy_after": c._server_proxy.health_check_rpc()["status"],
        "notes": notes.texts(),
    }
    c.shutdown()
    return out


def handoff(ns: str) -> dict[str, Any]:
    echo = _echo(ns)
    relay = Relay(ray_options=RayOptions(namespace=ns))
    plain = Echo(free_port(), name="PlainEcho")  # the process backend, handed over too
    out = {
        "echo_pid": echo.server_pid,
        "relay_pid": relay.server_pid,
        "via_relay": relay.relay(echo, "hi"),
        "plain_pid": plain.server_pid,
        "via_relay_plain": relay.relay(plain, "hello"),
    }
    for client in (plain, relay, echo):
        client.shutdown()
    return out


def dependency(ns: str) -> dict[str, Any]:
    """A Ray actor's server built with a process-backed service's client, which follows
    that service's restart."""
    echo = Echo(
        free_port(),
        name="DepEcho",
        health_check_interval_s=0.1,
        max_consecutive_failures=1,
        enable_health_check=True,
    )
    reader = Reader(echo, ray_options=RayOptions(namespace=ns))
    out: dict[str, Any] = {"echo_pid": echo.server_pid, "before": reader.read("one")}
    old = echo.server_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while echo.server_pid in (None, old) or echo.state.value != "running":
        assert time.monotonic() < deadline, "Echo was not restarted"
        time.sleep(0.02)
    out.update(restarted_pid=echo.server_pid, after=reader.read("two"))
    for client in (reader, echo):
        client.shutdown()
    return out


def streams(ns: str) -> dict[str, Any]:
    """Streaming methods on the Ray backend: sync, asyncio, an error mid-stream, a break."""
    client = RayStreams(ray_options=RayOptions(namespace=ns))
    out: dict[str, Any] = {"count": list(client.server.count_rpc(1000))}
    got: list[int] = []
    try:
        for item in client.server.fail_at_rpc(5):
            got.append(item)
    except ValueError as exc:
        out["error"] = [got, str(exc)]

    async def aio() -> list[int]:
        return [x async for x in client._rpc_astream("acount_rpc", (4,))]

    out["aio"] = asyncio.run(aio())
    for item in client.server.ticks_rpc(0.001):
        if item == 3:
            break
    out["after_break"] = client.server.pid_rpc() > 0
    client.shutdown()
    return out


def arrays(ns: str) -> dict[str, Any]:
    """Large numpy arrays on the Ray backend: through Ray's object store, read-only."""
    import numpy

    client = RayBuffers(ray_options=RayOptions(namespace=ns))
    array = numpy.arange(4 << 20, dtype=numpy.uint8)
    echoed = client.server.echo_rpc(array)
    out = {
        "server_sees_writable": client.server.writable_rpc(array),
        "equal": bool(numpy.array_equal(echoed, array)),
        "result_writable": bool(echoed.flags.writeable),
    }
    client.shutdown()
    return out


def tls(ns: str) -> dict[str, Any]:
    """A call through the service's actor, with everything the driver has of Ray's env."""
    c = _echo(ns)
    out = {"echo": c.echo("over Ray's TLS"), "remote_pid": c.remote_pid()}
    c.shutdown()
    return out


def owner(ns: str, detached: str = "no") -> dict[str, Any]:
    """Start the service, report, and keep it until stdin closes (or we are killed)."""
    c = _echo(ns, ray_options=RayOptions(namespace=ns, detached=detached == "yes"))
    _emit("READY", {"pid": c.server_pid, "owner": os.getpid()})
    sys.stdin.read()
    c.shutdown()
    return {"stopped": True}


def attach(ns: str) -> dict[str, Any]:
    c = Echo.attach(
        service_name="Echo", backend="ray", ray_options=RayOptions(namespace=ns), timeout_s=30
    )
    out = {"is_owner": c.is_owner, "pid": c.server_pid, "add": c.add(1, 2)}
    c.shutdown()
    # A non-owner's shutdown leaves the actor running: attach again.
    again = Echo.attach(
        service_name="Echo", backend="ray", ray_options=RayOptions(namespace=ns), timeout_s=5
    )
    out["after_shutdown"] = again.add(2, 2)
    return out


def start(ns: str, detached: str = "no") -> dict[str, Any]:
    """Try to start the service (a live or stale one may already hold the name)."""
    try:
        c = _echo(ns, ray_options=RayOptions(namespace=ns, detached=detached == "yes"))
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    out = {"pid": c.server_pid, "add": c.add(3, 4)}
    c.shutdown()
    return out


def failures(ns: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["broken"] = _error(lambda: Broken(ray_options=RayOptions(namespace=ns)))
    out["unplaceable"] = _error(
        lambda: _echo(
            ns,
            ray_options=RayOptions(namespace=ns, resources={"no_such_node": 1}),
            start_timeout_s=3.0,
        )
    )
    # The name is free again after both failures.
    c = _echo(ns)
    out["then"] = c.add(1, 1)
    c.shutdown()
    return out


def local(ns: str) -> dict[str, Any]:
    """No RAY_ADDRESS: a local Ray is started here, and ends with this program."""
    import psutil

    c = _echo(ns)
    pids = [p.pid for p in psutil.Process().children(recursive=True)]
    out = {"add": c.add(5, 6), "pids": pids, "actor_pid": c.server_pid}
    c.shutdown()
    return out


def nowhere(ns: str) -> dict[str, Any]:
    """RAY_ADDRESS names a port where no cluster runs: one error, at once."""
    began = time.monotonic()
    error = _error(lambda: _echo(ns))
    return {"error": error, "seconds": time.monotonic() - began}


def attach_without_cluster(ns: str) -> dict[str, Any]:
    """An unrelated program attaches, with no cluster to look in: told so, at once, and no
    Ray of its own started for nothing."""
    import sys

    began = time.monotonic()
    error = _error(
        lambda: Echo.attach(
            service_name="Echo", backend="ray", ray_options=RayOptions(namespace=ns), timeout_s=5
        )
    )
    ray = sys.modules.get("ray")
    return {
        "error": error,
        "seconds": time.monotonic() - began,
        "ray_started": bool(ray is not None and ray.is_initialized()),
    }


def forks(ns: str) -> dict[str, Any]:
    """A program that imported ray starts process-backend services from several threads
    at once (a registry does), with fork, over and over."""
    import threading

    import ray  # noqa: F401  (it loads filelock, whose audit hook polices forks)

    errors: list[str] = []
    started = 0
    lock = threading.Lock()

    def one() -> None:
        nonlocal started
        try:
            with Echo(free_port(), name="ForkEcho", start_method="fork") as client:
                assert client.add(1, 1) == 2
            with lock:
                started += 1
        except Exception as exc:
            errors.append(repr(exc))

    for _ in range(8):
        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    return {"started": started, "errors": errors[:3]}


def missing(ns: str) -> dict[str, Any]:
    sys.modules["ray"] = None  # type: ignore[assignment]
    import rpcgen.runtime  # noqa: F401

    return {"error": _error(lambda: _echo(ns))}


def where(ns: str, resource: str) -> dict[str, Any]:
    """The netns test's client: a Relay pinned to the node that has ``resource``."""
    from rpcgen.runtime.ray_cluster import list_services

    # Bounds, not waits: a first worker on a fresh node may take longer than the default.
    relay = Relay(
        ray_options=RayOptions(namespace=ns, resources={resource: 1}, num_cpus=0),
        start_timeout_s=60,
    )
    echo = _echo(
        ns,
        ray_options=RayOptions(namespace=ns, resources={resource: 1}, num_cpus=0),
        start_timeout_s=60,
    )
    out = {
        "where": relay.where(),
        "via_relay": relay.relay(echo, "across"),
        "actors": list_services(namespace=ns),
        "driver_pid": os.getpid(),
    }
    relay.shutdown()
    echo.shutdown()
    return out


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    f.__name__: f
    for f in (
        basic,
        tls,
        attach_without_cluster,
        sigkill,
        unhealthy,
        handoff,
        dependency,
        streams,
        arrays,
        owner,
        attach,
        start,
        failures,
        local,
        missing,
        forks,
        nowhere,
        where,
    )
}

if __name__ == "__main__":
    name, *args = sys.argv[1:]
    _emit("RESULT", SCENARIOS[name](*args))
