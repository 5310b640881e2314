"""The Ray backend against a real local Ray (one head per test session, 2 CPUs).

Each scenario runs as its own program (tests/support/ray_scenarios.py), a Ray
driver of its own; this process never connects to Ray.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import pki
from tests.support.netns_hosts import veth_hosts
from tests.support.procs import finish, python_process, read_line
from tests.support.ray_cluster import (
    ROOT,
    SKIP_NO_RAY,
    RayNode,
    parse_line,
    ray_installed,
    run_scenario,
    scenario_env,
    start_node,
)
from tests.support.waiting import free_port, pid_alive, wait_until

pytestmark = [
    pytest.mark.skipif(not ray_installed(), reason=SKIP_NO_RAY),
    # Under xdist (--dist loadgroup), one worker runs every Ray test: one Ray head.
    pytest.mark.xdist_group("ray"),
]

_names = itertools.count(1)


def namespace() -> str:
    """Each test's actors in a namespace of their own (tests may run at once)."""
    return f"t{os.getpid()}-{next(_names)}"


def test_calls_exceptions_aio_pickling_and_shutdown(ray_head: RayNode) -> None:
    out = run_scenario(ray_head, "basic", namespace())
    assert out["state"] == "running"
    assert out["pid"] == out["remote_pid"] and out["pid"] != os.getpid()
    assert (out["add"], out["echo"]) == (5, {"a": [1, 2]})
    assert "address=ray:" in out["repr"]
    assert out["health"] is True
    # A server exception arrives as its own type, with the server's traceback as cause,
    # and survives pickling, exactly as with the process backend.
    boom = out["boom"]
    assert (boom["type"], boom["message"], boom["cause"]) == (
        "ValueError",
        "bad input",
        "RemoteTraceback",
    )
    assert boom["pickled_type"] == "ValueError"
    needs = out["needs_args"]
    assert needs["type"] == "NeedsArgsError" and needs["attrs"]["code"] == 42
    assert out["local_class"]["type"] == "RemoteCallError"
    assert "OnlyHere" in out["local_class"]["message"]
    assert out["service_error"]["type"] == "ServiceUnavailable"
    assert "inner down" in out["service_error"]["message"]
    assert out["private"]["type"] == "RemoteCallError"
    assert "not exposed" in out["private"]["message"]
    assert out["missing"]["type"] == "RemoteCallError"
    assert out["unpicklable"]["type"] in ("RemoteCallError", "TypeError")
    assert out["after_errors"] == 2
    aio = out["aio"]
    assert aio["adds"] == list(range(1, 21))
    assert aio["meet"] == [0, 1, 2, 3]  # four calls ran at once in the actor
    assert aio["boom"] == ["ValueError", "async bad", "RemoteTraceback"]
    assert out["spawned_child"] == [42, out["pid"]]
    assert out["after_shutdown"]["type"] == "ServiceStopped"
    assert out["attach_after_shutdown"]["type"] == "ServiceNotFound"


def test_sigkill_of_the_actor_worker_ray_restarts_it(ray_head: RayNode) -> None:
    out = run_scenario(ray_head, "sigkill", namespace())
    assert out["new"] != out["old"]
    assert not pid_alive(out["old"])
    assert out["server_pid"] == out["new"]
    assert out["healthy"] is True and out["calls"] == 42
    assert set(out["errors"]) <= {"ServiceUnavailable"}
    assert any(
        "Ray restarted its actor" in note and f"{out['old']} -> {out['new']}" in note
        for note in out["notes"]
    ), out["notes"]


def test_failing_health_checks_owner_kills_and_ray_restarts(ray_head: RayNode) -> None:
    out = run_scenario(ray_head, "unhealthy", namespace())
    assert out["results"] == [False, False]
    assert out["new"] != out["old"] and out["remote_pid"] == out["new"]
    assert out["state"] == "running" and out["healthy_after"] == "ok"
    assert any("restarted" in note and "status failure" in note for note in out["notes"]), out[
        "notes"
    ]


def test_one_services_client_handed_to_anothers_server(ray_head: RayNode) -> None:
    out = run_scenario(ray_head, "handoff", namespace())
    via = out["via_relay"]
    assert via == {"echo": "hi", "their_pid": out["echo_pid"], "my_pid": out["relay_pid"]}
    plain = out["via_relay_plain"]
    assert plain["echo"] == "hello" and plain["their_pid"] == out["plain_pid"]


def test_a_ray_server_built_with_a_dependency_follows_its_restart(ray_head: RayNode) -> None:
    out = run_scenario(ray_head, "dependency", namespace())
    assert out["before"]["echo"] == "one" and out["before"]["their_pid"] == out["echo_pid"]
    assert out["restarted_pid"] != out["echo_pid"]
    assert out["after"] == {
        "echo": "two",
        "their_pid": out["restarted_pid"],
        "my_pid": out["before"]["my_pid"],  # the same actor: only Echo restarted
    }


def test_streaming_methods_on_the_ray_backend(ray_head: RayNode) -> None:
    out = run_scenario(ray_head, "streams", namespace())
    assert out["count"] == list(range(1000))
    assert out["error"] == [[0, 1, 2, 3, 4], "failed at item 5"]
    assert out["aio"] == [0, 1, 2, 3]
    assert out["after_break"] is True


def test_large_arrays_go_through_rays_object_store_read_only(ray_head: RayNode) -> None:
    out = run_scenario(ray_head, "arrays", namespace())
    # what Ray users expect: zero-copy from the object store, so read-only on both ends
    assert out == {"server_sees_writable": False, "equal": True, "result_writable": False}


def test_attach_and_a_live_owner_keeps_its_name(ray_head: RayNode) -> None:
    ns = namespace()
    owner_env = scenario_env(ray_head)
    with python_process("-m", "tests.support.ray_scenarios", "owner", ns, env=owner_env) as proc:
        ready = read_line(proc, timeout=90)
        assert ready is not None and ready.startswith("READY"), ready
        owner = json.loads(ready.split(" ", 1)[1])
        attached = run_scenario(ray_head, "attach", ns)
        assert attached == {
            "is_owner": False,
            "pid": owner["pid"],
            "add": 3,
            "after_shutdown": 4,
        }
        second = run_scenario(ray_head, "start", ns)
        assert second["error"] == "ServiceAlreadyRunning", second
        assert f"pid {owner['owner']}" in second["message"]
        listed = subprocess.run(
            [sys.executable, "-m", "rpcgen", "ps", "--json"],
            env=scenario_env(ray_head),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        rows = [r for r in json.loads(listed.stdout) if r.get("namespace") == ns]
        assert [(r["service"], r["backend"], r["pid"]) for r in rows] == [
            ("Echo", "ray", owner["pid"])
        ]
        assert rows[0]["owner"]["pid"] == owner["owner"]
        table = subprocess.run(
            [sys.executable, "-m", "rpcgen", "ps"],
            env=scenario_env(ray_head),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Ray actors (cluster" in table.stdout and ns in table.stdout
        code, _ = finish(proc)  # stdin closes: the owner shuts down, and its actor goes
        assert code == 0
    started = run_scenario(ray_head, "start", ns)
    assert started.get("add") == 7, started  # the error, if any, says why


def test_stale_detached_actor_of_a_killed_owner_is_replaced(ray_head: RayNode) -> None:
    ns = namespace()
    owner_env = scenario_env(ray_head)
    with python_process(
        "-m", "tests.support.ray_scenarios", "owner", ns, "yes", env=owner_env
    ) as proc:
        ready = read_line(proc, timeout=90)
        assert ready is not None and ready.startswith("READY"), ready
        first = json.loads(ready.split(" ", 1)[1])
        os.kill(proc.pid, signal.SIGKILL)  # the owner crashes; its detached actor stays
        proc.wait(30)
    assert pid_alive(first["pid"])
    second = run_scenario(ray_head, "start", ns, "yes")
    assert "error" not in second, second
    assert second["pid"] != first["pid"] and second["add"] == 7
    wait_until(lambda: not pid_alive(first["pid"]), timeout=30, what="stale actor gone")


def test_start_failures_are_one_clear_error(ray_head: RayNode) -> None:
    out = run_scenario(ray_head, "failures", namespace())
    broken = out["broken"]
    assert broken["type"] == "StartupError"
    assert "NoDatabaseError: no database at db.invalid:5432" in broken["message"]
    unplaceable = out["unplaceable"]
    assert unplaceable["type"] == "StartupTimeout"
    assert "no_such_node" in unplaceable["message"] and "not placed" in unplaceable["message"]
    assert out["then"] == 2


def test_local_ray_started_on_first_use_is_gone_when_the_program_ends() -> None:
    if not ray_installed():
        pytest.skip(SKIP_NO_RAY)
    # A Ray folder of its own: ray.init() would join a cluster that `ray start` ran here.
    folder = tempfile.mkdtemp(prefix="rl", dir="/tmp")
    try:
        env = scenario_env(None, RAY_TMPDIR=folder)
        out = run_scenario(None, "local", namespace(), timeout_s=180, env=env)
        assert out["add"] == 11 and out["actor_pid"] in out["pids"]
        assert len(out["pids"]) >= 3  # gcs_server, raylet, the actor's worker, ...

        wait_until(
            lambda: not any(pid_alive(pid) for pid in out["pids"]),
            timeout=60,
            what="the local Ray's processes to exit",
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_attach_with_no_cluster_to_look_in_says_so_at_once() -> None:
    """Issue 21: an unrelated program's attach() started a private Ray, searched it for
    12 s and said "no running service"."""
    folder = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # no `ray start` cluster recorded
    try:
        env = scenario_env(None, RAY_TMPDIR=folder)
        out = run_scenario(None, "attach_without_cluster", namespace(), env=env)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert out["error"]["type"] == "ServiceNotFound", out
    assert "no Ray cluster to look in" in out["error"]["message"]
    assert "ray start --head" in out["error"]["message"]
    assert out["ray_started"] is False  # nothing started, nothing searched


def test_missing_ray_is_one_line() -> None:
    out = run_scenario(None, "missing", namespace())
    error = out["error"]
    assert error["type"] == "BackendNotInstalled"
    assert error["message"].endswith("pip install 'rpcgen[ray]'")
    assert "\n" not in error["message"]


def test_a_cluster_address_where_nothing_answers_is_one_error_at_once() -> None:
    if not ray_installed():
        pytest.skip(SKIP_NO_RAY)
    env = scenario_env(None, RAY_ADDRESS=f"127.0.0.1:{free_port()}")
    out = run_scenario(None, "nowhere", namespace(), env=env)
    assert out["error"]["type"] == "ServiceUnavailable"
    # rpcgen's own check, before ray.init() would retry for a long while
    assert "no Ray cluster answers" in out["error"]["message"]


def test_a_program_that_imported_ray_starts_process_services_from_threads_at_once() -> None:
    """filelock (loaded by `import ray`) makes a fork raise on Python 3.12+ while another
    thread forks; a registry starts services from several threads."""
    if not ray_installed():
        pytest.skip(SKIP_NO_RAY)
    if sys.version_info < (3, 12):
        pytest.skip("filelock polices forks with an audit hook only on Python 3.12+")
    out = run_scenario(None, "forks", namespace())
    assert out == {"started": 24, "errors": []}


def test_importing_the_runtime_never_imports_ray() -> None:
    code = "import sys, rpcgen.runtime, rpcgen.runtime.backend; print('ray' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.stdout.strip() == "False", done.stderr


def test_ps_without_a_cluster_lists_no_ray_services() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rpcgen", "ps", "--json", "--ray-address", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=scenario_env(None),
    )
    assert done.returncode == 0
    assert "Ray services not listed" in done.stderr
    assert all(row.get("backend") != "ray" for row in json.loads(done.stdout))
    assert parse_line("RESULT", done.stdout) is None


@pytest.mark.slow
def test_ps_against_a_token_cluster_without_the_token_warns_once_and_lists_the_rest(
    ray_head: RayNode,
) -> None:
    """Issue 21: `rpcgen ps` with a `ray start` cluster (token auth) and no token in the
    environment printed Ray's retries, then an internal error, and listed nothing."""
    env = scenario_env(None, RAY_ADDRESS=ray_head.address)  # no RAY_AUTH_* variables
    done = subprocess.run(
        [sys.executable, "-m", "rpcgen", "ps", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("rpcgen: warning")]
    assert len(warnings) == 1, done.stderr
    assert "RAY_AUTH_TOKEN_PATH" in warnings[0] and "Ray services not listed" in warnings[0]
    assert "internal error" not in done.stderr
    json.loads(done.stdout)  # the local servers' list, as JSON


def test_two_nodes_across_a_veth_the_actor_pinned_to_the_worker_node() -> None:
    """A Ray head in namespace A, a worker node in namespace B; the service's actor is
    pinned to B by a custom resource, and a client in A calls it across the veth."""
    if not ray_installed():
        pytest.skip(SKIP_NO_RAY)
    with veth_hosts("r", 232) as (ns_a, addr_a, ns_b, addr_b):
        head = worker = None
        try:
            head = start_node(
                num_cpus=1,
                resources='{"node_a": 1}',
                node_ip=addr_a,
                prefix=["ip", "netns", "exec", ns_a],
            )
            assert head.address.startswith(addr_a + ":"), head.address
            worker = start_node(
                head_address=head.address,
                num_cpus=1,
                resources='{"node_b": 2}',  # the Relay and the Echo actor
                node_ip=addr_b,
                prefix=["ip", "netns", "exec", ns_b],
                token_of=head,
            )
            out = run_scenario(
                head, "where", namespace(), "node_b", prefix=["ip", "netns", "exec", ns_a]
            )
            # Each actor reports the node it runs on: B, across the veth from the client.
            actors = {a["service"]: a for a in out["actors"]}
            assert {name: a["node_ip"] for name, a in actors.items()} == {
                "Echo": addr_b,
                "Relay": addr_b,
            }
            assert out["where"]["pid"] == actors["Relay"]["pid"] != out["driver_pid"]
            assert out["via_relay"] == {
                "echo": "across",
                "their_pid": actors["Echo"]["pid"],
                "my_pid": actors["Relay"]["pid"],
            }
        finally:
            for node in (worker, head):
                if node is not None:
                    node.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)  # a head of its own, and a program that Ray refuses slowly
def test_a_service_on_a_ray_cluster_with_ray_tls_on(tmp_path: Path) -> None:
    """Issue 18: Ray's own TLS (RAY_USE_TLS and its certificate variables) on the head and
    in the program; the service's calls go through it. A program without them is refused."""
    if not ray_installed():
        pytest.skip(SKIP_NO_RAY)
    # Ray's nodes dial each other at the address Ray picks: the certificate must name it.
    node_ip = subprocess.run(
        [sys.executable, "-c", "import ray.util; print(ray.util.get_node_ip_address())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()[-1]
    folder = pki.make_pki(tmp_path / "pki", ips=tuple(dict.fromkeys(("127.0.0.1", node_ip))))
    tls_env = {
        "RAY_USE_TLS": "1",
        "RAY_TLS_SERVER_CERT": str(folder / "server.pem"),
        "RAY_TLS_SERVER_KEY": str(folder / "server.key"),
        "RAY_TLS_CA_CERT": str(folder / "ca.pem"),
    }
    head = start_node(num_cpus=1, extra_env=tls_env)
    try:
        out = run_scenario(head, "tls", namespace())
        assert out["echo"] == "over Ray's TLS"
        plain_env = scenario_env(head)
        for name in tls_env:
            plain_env.pop(name, None)
        # Without Ray's TLS the program never gets in: Ray retries (for minutes) rather
        # than fail, so it is given 30 s and must not have made a call.
        with pytest.raises((AssertionError, subprocess.TimeoutExpired)):
            run_scenario(head, "tls", namespace(), env=plain_env, timeout_s=30)
    finally:
        head.stop()
