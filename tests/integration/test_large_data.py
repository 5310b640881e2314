"""Large buffers out of band (pickle 5): numpy arrays, bytes, bytearray and memoryview,
nested in containers and dataclasses, as arguments and results, under every start method;
copies stay copies."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.stream_services import Buffers

np = pytest.importorskip("numpy", reason="the large-data tests need numpy (pip install numpy)")

SIZES = [1 << 10, 1 << 20, 64 << 20]


@dataclass
class Frame:
    name: str
    pixels: Any


def _array(size: int, seed: int = 0) -> Any:
    return np.random.default_rng(seed).integers(0, 255, size=size, dtype=np.uint8)


@pytest.mark.parametrize("size", SIZES)
def test_arrays_arrive_equal_as_arguments_and_results(buffers: Buffers, size: int) -> None:
    array = _array(size)
    out = buffers.server.echo_rpc(array)
    assert out.dtype == array.dtype and out.shape == array.shape
    assert np.array_equal(out, array) and out.flags.writeable
    shaped = _array(size).reshape(-1, 4).astype(np.float32)
    assert np.array_equal(buffers.server.echo_rpc(shaped), shaped)
    fortran = np.asfortranarray(shaped)
    assert np.array_equal(buffers.server.echo_rpc(fortran), fortran)
    strided = shaped[::2]  # not contiguous: still right (pickled in the stream)
    assert np.array_equal(buffers.server.echo_rpc(strided), strided)


def test_bytes_bytearray_and_memoryview_nested(buffers: Buffers) -> None:
    big = 3 << 20
    value: dict[str, Any] = {
        "frames": [Frame("a", _array(big, 1)), Frame("b", _array(10, 2))],
        "raw": bytes(range(256)) * (big // 256),
        "mutable": bytearray(b"m" * big),
        "view": memoryview(b"v" * big),
        "typed": memoryview(_array(big, 3).view(np.float64)),
        "small": bytearray(b"tiny"),
    }
    buffers.server.keep_rpc(value)
    out = buffers.server.kept_rpc()
    assert [f.name for f in out["frames"]] == ["a", "b"]
    assert np.array_equal(out["frames"][0].pixels, value["frames"][0].pixels)
    assert out["raw"] == value["raw"] and out["mutable"] == value["mutable"]
    assert isinstance(out["mutable"], bytearray) and isinstance(out["view"], memoryview)
    assert out["view"] == value["view"]
    assert out["typed"].format == "d" and out["typed"].tobytes() == value["typed"].tobytes()
    assert out["small"] == bytearray(b"tiny")


def test_the_receiver_changing_its_copy_does_not_change_the_senders(buffers: Buffers) -> None:
    array = _array(4 << 20)
    before = array.copy()
    scribbled = buffers.server.scribble_rpc(array)  # the server writes into what it got
    assert np.array_equal(array, before)  # ours is untouched
    assert (scribbled == 7).all()
    buffers.server.keep_rpc(array)
    mine = buffers.server.kept_rpc()
    mine[:] = 1  # and what we got back is ours alone
    assert np.array_equal(buffers.server.kept_rpc(), before)


def test_asyncio_calls_and_streams_carry_arrays(buffers: Buffers) -> None:
    array = _array(8 << 20)

    async def main() -> tuple[Any, list[Any]]:
        echoed = await buffers._rpc_acall("echo_rpc", (array,))
        streamed = [a async for a in buffers._rpc_astream("arrays_rpc", (4, 1 << 20))]
        return echoed, streamed

    echoed, streamed = asyncio.run(main())
    assert np.array_equal(echoed, array)
    assert [int(a[0]) for a in streamed] == [0, 1, 2, 3]
    assert all(a.nbytes == 1 << 20 for a in streamed)
    assert [int(a[-1]) for a in buffers.server.arrays_rpc(3, 1 << 20)] == [0, 1, 2]


def test_direct_mode_copies_once_and_keeps_copies_apart(port: int) -> None:
    with Buffers(port, running_unit_tests=True, direct_mode_pickle=True) as client:
        array = _array(2 << 20)
        before = array.copy()
        scribbled = client.server.scribble_rpc(array)
        assert np.array_equal(array, before) and (scribbled == 7).all()
        assert client.server.echo_rpc(memoryview(b"abc")) == memoryview(b"abc")
