"""Large buffers through shared memory on one host (see rpcgen.runtime.shm), with real
processes under every start method: both directions, copies that stay copies, views
kept by their receiver, the per-connection bound, SIGKILL of either side (with the
arenas counted before and after), a tiny /dev/shm, a failure to make the arenas, and
another user."""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from rpcgen.runtime import RestartPolicy, ServiceUnavailable, shm
from tests.support.other_user import other_user
from tests.support.stream_services import Buffers, echo_in_child, in_shared_memory
from tests.support.waiting import wait_until

np = pytest.importorskip("numpy", reason="the shared-memory tests need numpy")
pytestmark = pytest.mark.skipif(not shm.supported(), reason="memfd and seals are Linux-only")

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
ARENA = "memfd:rpcgen-arena"


def arenas(pid: int) -> tuple[int, int]:
    """(open fds, mappings) of rpcgen arenas in process ``pid``."""
    fds = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds += ARENA in os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed while we looked
    with open(f"/proc/{pid}/maps") as maps:
        mappings = sum(ARENA in line for line in maps)
    return fds, mappings


def dev_shm() -> list[str]:
    return sorted(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else []


def _array(mib: float, seed: int = 0) -> Any:
    return np.random.default_rng(seed).integers(0, 255, size=int(mib * MIB), dtype=np.uint8)


def test_large_arrays_go_through_shared_memory_both_ways(buffers: Buffers) -> None:
    array = _array(16)
    assert buffers.server.shared_rpc(array)  # the request: the server got a view
    out = buffers.server.echo_rpc(array)
    assert in_shared_memory(out) and np.array_equal(out, array)  # the reply: so did we
    assert out.flags.writeable
    small = _array(1 / 16)  # under SHM_MIN_BYTES: the socket
    assert not buffers.server.shared_rpc(small)
    assert np.array_equal(buffers.server.echo_rpc(small), small)


def test_asyncio_calls_go_through_shared_memory_too(buffers: Buffers) -> None:
    async def main() -> list[Any]:
        arrays = [_array(4, seed) for seed in range(8)]
        got = await asyncio.gather(*(buffers._rpc_acall("echo_rpc", (a,)) for a in arrays))
        assert await buffers._rpc_acall("shared_rpc", (arrays[0],))  # the server got a view
        return [
            (np.array_equal(g, a), in_shared_memory(g)) for g, a in zip(got, arrays, strict=True)
        ]

    assert asyncio.run(main()) == [(True, True)] * 8


def allocated(pid: int) -> int:
    """Bytes of memory the rpcgen arenas open in ``pid`` hold (st_blocks, each arena once:
    a mapping may hold an fd of its own)."""
    blocks: dict[tuple[int, int], int] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{name}"
        try:
            if ARENA in os.readlink(path):
                info = os.stat(path)
                blocks[(info.st_dev, info.st_ino)] = info.st_blocks * 512
        except OSError:
            continue
    return sum(blocks.values())


def test_streamed_arrays_go_through_shared_memory_within_the_window(port: int) -> None:
    client = Buffers(port, stream_window=(1000, 4 * MIB))
    try:
        seen = 0
        for i, item in enumerate(client.server.arrays_rpc(64, MIB)):
            assert in_shared_memory(item) and int(item[0]) == int(item[-1]) == i
            seen += 1
            del item
        assert seen == 64
        # 64 MiB went by; the server ran ahead by the window only (its bytes are counted
        # as sent, not as the short messages on the socket)
        assert allocated(os.getpid()) <= 16 * MIB

        async def main() -> list[Any]:
            return [a async for a in client._rpc_astream("arrays_rpc", (8, MIB))]

        got = asyncio.run(main())
        assert [int(a[0]) for a in got] == list(range(8)) and all(map(in_shared_memory, got))
    finally:
        client.shutdown()


@pytest.mark.slow
def test_a_512_mb_array_nested_in_a_dict_round_trips(buffers: Buffers) -> None:
    array = np.arange(64 * MIB, dtype=np.uint64).view(np.uint8)  # 512 MB, cheap to make
    out = buffers.server.echo_rpc({"weights": array, "name": "w"})
    assert out["name"] == "w" and in_shared_memory(out["weights"])
    assert np.array_equal(out["weights"], array)
    del out
    assert buffers.server.shared_rpc(array[: 64 * MIB])


def test_copies_stay_copies_on_both_sides(buffers: Buffers) -> None:
    array = _array(8)
    before = array.copy()
    scribbled = buffers.server.scribble_rpc(array)  # the server writes the array it got
    assert (scribbled == 7).all()
    assert np.array_equal(array, before)  # ours is untouched
    buffers.server.keep_rpc(array)
    kept = buffers.server.kept_rpc()
    assert in_shared_memory(kept)
    kept[:] = 1  # we write what we got
    assert np.array_equal(buffers.server.kept_rpc(), before)  # the server's is untouched


def test_a_view_the_receiver_keeps_keeps_its_contents(buffers: Buffers) -> None:
    pid = os.getpid()
    base = arenas(pid)[1]
    kept = [buffers.server.echo_rpc(np.full(4 * MIB, i, np.uint8)) for i in range(4)]
    assert all(in_shared_memory(k) for k in kept)
    for i in range(20):
        buffers.server.echo_rpc(np.full(4 * MIB, 100 + i, np.uint8))
    assert [int(k.min()) == int(k.max()) == i for i, k in enumerate(kept)] == [True] * 4
    assert arenas(pid)[1] >= base + 4  # one mapping per kept block
    del kept
    gc.collect()
    assert arenas(pid)[1] <= base  # gone with the last view


def test_shared_memory_per_connection_is_bounded(port: int) -> None:
    client = Buffers(port, shared_memory_bytes=8 * MIB)
    try:
        big = _array(16)
        out = client.server.echo_rpc(big)
        assert np.array_equal(out, big) and not in_shared_memory(out)  # over the bound
        held = [client.server.echo_rpc(_array(3, i)) for i in range(2)]
        assert all(in_shared_memory(h) for h in held)
        third = client.server.echo_rpc(_array(3, 9))  # no room while both are held
        assert np.array_equal(third, _array(3, 9)) and not in_shared_memory(third)
        del held
        gc.collect()
        assert in_shared_memory(client.server.echo_rpc(_array(3)))
    finally:
        client.shutdown()
    off = Buffers(port, shared_memory_bytes=0)
    try:
        out = off.server.echo_rpc(_array(4))
        assert np.array_equal(out, _array(4)) and not in_shared_memory(out)
    finally:
        off.shutdown()


def test_a_client_sigkilled_mid_transfer_leaves_no_arena(buffers: Buffers, port: int) -> None:
    shm_before = dev_shm()
    server = buffers.server_pid
    assert server is not None
    buffers.server.echo_rpc(_array(1))
    baseline = arenas(server)  # our own connection's arenas
    child = multiprocessing.get_context("spawn").Process(
        target=echo_in_child, args=(port, 64 * MIB), daemon=True
    )
    child.start()
    try:
        wait_until(lambda: buffers.server.echoes_rpc() >= 2, timeout=60, what="the child's echoes")
        assert arenas(server)[0] > baseline[0]  # the child's connection has its arenas
        os.kill(child.pid or 0, signal.SIGKILL)
        wait_until(
            lambda: arenas(server) == baseline, timeout=10, what="the server to drop the arenas"
        )
    finally:
        child.kill()
        child.join(10)
    assert dev_shm() == shm_before
    assert np.array_equal(buffers.server.echo_rpc(_array(16)), _array(16))


def test_a_server_sigkilled_mid_transfer_leaves_no_arena(port: int) -> None:
    me = os.getpid()
    gc.collect()
    before, shm_before = arenas(me), dev_shm()
    client = Buffers(
        port,
        enable_health_check=True,
        health_check_interval_s=0.1,
        max_consecutive_failures=1,
        restart_policy=RestartPolicy(flap_max_restarts=1000),
    )
    stop = threading.Event()
    echoed: list[bool] = []

    def echo() -> None:
        array = _array(64)
        while not stop.is_set():
            try:
                echoed.append(bool(np.array_equal(client.server.echo_rpc(array), array)))
            except ServiceUnavailable:
                continue

    thread = threading.Thread(target=echo)
    try:
        thread.start()
        wait_until(lambda: len(echoed) >= 2, timeout=60, what="echoes")
        old = client.server_pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: client.server_pid not in (None, old), timeout=30, what="the restart")
        count = len(echoed)
        wait_until(lambda: len(echoed) >= count + 2, timeout=60, what="echoes after it")
        assert all(echoed)
        assert in_shared_memory(client.server.echo_rpc(_array(16)))
    finally:
        stop.set()
        thread.join(60)
        client.shutdown()
    gc.collect()
    assert arenas(me) == before
    assert dev_shm() == shm_before


def _driver(*args: str, prefix: list[str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "tests.support.shm_driver", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_tiny_dev_shm_does_not_matter() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a 16 MB /dev/shm in a private namespace")
    mount = 'mount -t tmpfs -o size=16m tmpfs /dev/shm && exec "$@"'
    got = _driver(
        "echo", "32", prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh"]
    )
    # 32 MiB arrays from three threads at once, past a 16 MB /dev/shm: memfd is not in it
    assert got["echoes"] == 9 and got["equal"] and all(got["shared"])
    assert got["dev_shm"] == [] and got["warnings"] == []


def test_arenas_that_cannot_be_made_fall_back_to_the_socket_with_one_warning() -> None:
    got = _driver("fsize", "4")  # RLIMIT_FSIZE 1 MiB: making a 1 GiB arena fails (EFBIG)
    assert got["echoes"] == 9 and got["equal"]
    assert not any(got["shared"])
    assert len(got["warnings"]) == 1, got["warnings"]
    assert "large buffers go by the socket instead" in got["warnings"][0]


def test_another_user_cannot_open_the_arenas(buffers: Buffers) -> None:
    buffers.server.echo_rpc(_array(1))
    me = os.getpid()
    fds = []
    for name in os.listdir(f"/proc/{me}/fd"):
        try:
            if ARENA in os.readlink(f"/proc/{me}/fd/{name}"):
                fds.append(int(name))
        except OSError:
            continue
    assert fds
    probe = (
        "import json, sys\n"
        "out = {}\n"
        "for fd in sys.argv[2:]:\n"
        "    try:\n"
        "        open(f'/proc/{sys.argv[1]}/fd/{fd}', 'rb').close(); out[fd] = 'opened'\n"
        "    except OSError as exc:\n"
        "        out[fd] = type(exc).__name__\n"
        "print(json.dumps(out))\n"
    )
    with other_user() as user:
        done = subprocess.run(
            ["/usr/bin/python3", "-c", probe, str(me), *map(str, fds)],
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout).values()) == {"PermissionError"}
