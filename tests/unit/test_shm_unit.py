"""Shared-memory arenas in one process: the allocator, the lifetime of views, and the
checks on everything a peer sends (offers and message headers)."""

from __future__ import annotations

import fcntl
import gc
import os
import pickle
import struct
from typing import Any

import pytest

from rpcgen.runtime import shm
from rpcgen.runtime.oob import SHARED, OutOfBand, dumps_oob, loads

pytestmark = pytest.mark.skipif(not shm.supported(), reason="memfd and seals are Linux-only")

MIB = 1 << 20


def _pair(limit: int = 16 * MIB) -> tuple[shm.SharedLink, shm.SharedLink]:
    made = shm.offer(limit)
    assert made is not None
    client, offered = made
    server = shm.accept(offered)
    assert server is not None
    return client, server


def _message(value: Any) -> OutOfBand:
    message = dumps_oob(value, 5)
    assert isinstance(message, OutOfBand)
    return message


def _send(sender: shm.SharedLink, receiver: shm.SharedLink, value: Any) -> Any:
    placed = sender.place(_message(value))
    assert not isinstance(placed, OutOfBand), "expected it to go through shared memory"
    return loads(b"".join(bytes(p) for p in placed.pieces()), receiver.reader)


def test_buffers_arrive_equal_and_views_keep_their_block() -> None:
    client, server = _pair()
    first = _send(client, server, {"a": memoryview(b"x" * MIB), "b": memoryview(b"y" * MIB)})
    assert bytes(first["a"]) == b"x" * MIB and bytes(first["b"]) == b"y" * MIB
    held = dict(server.reader.held)
    assert len(held) == 1
    second = _send(client, server, memoryview(b"z" * MIB))  # the first block is held
    assert bytes(second) == b"z" * MIB
    offsets = {offset for offset, _ in client.writer.busy.values()}
    assert len(offsets) == 2
    assert bytes(first["a"]) == b"x" * MIB  # not overwritten by the second


def test_a_released_block_is_used_again_from_the_lowest_offset() -> None:
    client, server = _pair()
    kept = _send(client, server, pickle.PickleBuffer(bytearray(2 * MIB)))
    del kept
    gc.collect()
    assert server.reader.held == {}
    _send(client, server, pickle.PickleBuffer(bytearray(2 * MIB)))
    assert [offset for offset, _ in client.writer.busy.values()] == [0]


def test_no_room_sends_by_the_socket() -> None:
    client, server = _pair(limit=4 * MIB)
    kept = _send(client, server, pickle.PickleBuffer(bytearray(3 * MIB)))
    message = _message(pickle.PickleBuffer(bytearray(3 * MIB)))
    assert client.place(message) is message  # no room: as it was
    del kept
    gc.collect()
    assert client.place(message) is not message


def test_small_buffers_stay_on_the_socket() -> None:
    client, _ = _pair()
    message = _message(pickle.PickleBuffer(bytearray(shm.SHM_MIN_BYTES // 2)))
    assert client.place(message) is message


def test_a_receiver_writing_its_view_does_not_change_the_arena() -> None:
    client, server = _pair()
    got = _send(client, server, pickle.PickleBuffer(bytearray(b"a" * MIB)))
    view = memoryview(got)
    view[:4] = b"bbbb"  # copy-on-write: only this side's page
    offset, _ = next(iter(client.writer.busy.values()))
    start = shm._HEADER + offset
    assert bytes(client.writer.map[start : start + 4]) == b"aaaa"


def _header(count: int, slot: int, block: int, lengths: list[int]) -> bytes:
    return struct.pack("!BIIQ", 0, count | SHARED, slot, block) + struct.pack(
        f"!{len(lengths)}Q", *lengths
    )


@pytest.mark.parametrize(
    ("slot", "block", "size"),
    [(10_000, 0, 4096), (0, 123, 4096), (0, 0, 64 * MIB), (0, 15 * MIB, 2 * MIB)],
    ids=["slot", "misaligned", "too-large", "past-the-end"],
)
def test_a_header_outside_the_arena_is_refused(slot: int, block: int, size: int) -> None:
    _, server = _pair()
    body = pickle.dumps(None)
    data = _header(1, slot, block, [len(body), size]) + body
    with pytest.raises(ValueError, match="outside the arena"):
        server.reader.load(data)


def test_bad_lengths_and_a_connection_without_shared_memory_are_refused() -> None:
    _, server = _pair()
    body = pickle.dumps(None)
    with pytest.raises(ValueError, match="length"):
        server.reader.load(_header(1, 0, 0, [len(body) + 5, 4096]) + body)
    with pytest.raises(ValueError, match="without shared memory"):
        loads(_header(1, 0, 0, [len(body), 4096]) + body)


def test_offers_that_do_not_check_out_are_refused() -> None:
    made = shm.offer(16 * MIB)
    assert made is not None
    link, (pid, requests, replies, token, limit) = made
    assert shm.accept((pid, requests, replies, b"0" * 16, limit)) is None  # wrong token
    assert shm.accept((pid, requests, replies, token, limit * 2)) is None  # wrong size
    assert shm.accept((pid, requests, replies, token, "16")) is None
    assert shm.accept("not a tuple") is None
    assert shm.accept((pid, requests, replies, token)) is None
    read, write = os.pipe()  # never opened: a pipe's open could block
    try:
        assert shm.accept((pid, read, replies, token, limit)) is None
    finally:
        os.close(read)
        os.close(write)
    unsealed = os.memfd_create("rpcgen-arena", os.MFD_CLOEXEC)
    try:
        os.ftruncate(unsealed, shm._HEADER + limit)
        os.pwrite(unsealed, shm._MAGIC + token, 0)
        assert shm.accept((pid, unsealed, replies, token, limit)) is None
    finally:
        os.close(unsealed)
    assert shm.accept((pid, requests, replies, token, limit)) is not None
    del link


def test_arenas_are_sealed_against_shrinking() -> None:
    made = shm.offer(16 * MIB)
    assert made is not None
    _, (_, requests, _, _, _) = made
    assert fcntl.fcntl(requests, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
    with pytest.raises(PermissionError):
        os.ftruncate(requests, 4096)


def test_closing_gives_back_all_but_the_blocks_in_use() -> None:
    client, server = _pair(limit=64 * MIB)
    kept = _send(client, server, pickle.PickleBuffer(bytearray(b"k" * MIB)))
    dropped = _send(client, server, pickle.PickleBuffer(bytearray(b"d" * 32 * MIB)))
    del dropped
    gc.collect()
    fd = os.dup(client.writer.fd)
    try:
        allocated = os.fstat(fd).st_blocks * 512
        assert allocated >= 33 * MIB
        client.close()
        server.close()
        after = os.fstat(fd).st_blocks * 512
        assert after < 2 * MIB, after  # the header page and the block still held
        assert bytes(memoryview(kept)[:2]) == b"kk"
    finally:
        os.close(fd)
