"""Tagged frames and the asyncio view, without processes."""

from __future__ import annotations

import pickle
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpcgen.runtime import AsyncView
from rpcgen.runtime.wire import FrameReader, ProtocolError, tagged_frame


def encode(frames: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes(piece) for ident, body in frames for piece in tagged_frame(ident, body))


@given(
    frames=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=40_000)), max_size=12),
    cuts=st.lists(st.integers(1, 50_000), max_size=20),
)
def test_frames_survive_any_split_of_the_stream(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = encode(frames)
    reader = FrameReader()
    got: list[tuple[int, bytes]] = []
    pos = 0
    for cut in cuts:
        got += reader.feed(stream[pos : pos + cut])
        pos += cut
    got += reader.feed(stream[pos:])
    assert got == frames
    assert reader.buffered == 0


def test_one_byte_at_a_time() -> None:
    frames = [(i, pickle.dumps(("reply", i))) for i in range(50)]
    stream = encode(frames)
    reader = FrameReader()
    got = [frame for i in range(len(stream)) for frame in reader.feed(stream[i : i + 1])]
    assert got == frames


@pytest.mark.parametrize(
    "header", [b"\xff\xff\xff\xfe", b"\x00\x00\x00\x03abc", b"\x80\x00\x00\x00"]
)
def test_a_bad_frame_is_a_protocol_error(header: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameReader().feed(header + b"\x00" * 16)


def test_the_view_names_server_methods_for_typing_only() -> None:
    class Client:
        def _rpc_acall(
            self, name: str, args: tuple[object, ...], kwargs: dict[str, object]
        ) -> Coroutine[Any, Any, object]:
            async def done() -> object:
                return (name, args, kwargs)

            return done()

    view: AsyncView[object] = AsyncView(Client())  # type: ignore[arg-type]
    server: object = view._rpc_server
    name = server.add_rpc  # type: ignore[attr-defined]
    assert name == "add_rpc"
    coro: Any = view._rpc_call(name, 1, b=2)  # the fake client returns a coroutine
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    assert done.value.value == ("add_rpc", (1,), {"b": 2})
