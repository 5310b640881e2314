"""Large buffers outside the pickle stream (pickle protocol 5, PEP 574).

A message whose pickle would carry buffers of 64 KiB or more (numpy arrays,
``bytearray``, ``PickleBuffer``, anything whose ``__reduce_ex__(5)`` offers one)
is sent as ``[0x00][count][lengths][pickle][buffer]...``: the buffers go to the
socket straight from the sender's memory (one ``writev``, no copy into the
pickle), and the receiver unpickles with ``buffers=`` slices of the one
``bytearray`` the message was read into, so a numpy array arrives as a writable
view of that memory: one copy in all, the kernel's. A plain pickle never starts
with 0x00, so both kinds share a connection.

``bytes`` and ``str`` have no out-of-band form in pickle 5: they stay in the
pickle (the large-message path writes them into it with one copy).
"""

from __future__ import annotations

import copyreg
import io
import mmap
import pickle
import struct
from typing import Any, Protocol

__all__ = [
    "OOB_MIN_BYTES",
    "SHARED",
    "LargeBuffer",
    "OutOfBand",
    "Pieces",
    "SharedReader",
    "dumps_oob",
    "loads",
    "roundtrip",
    "small_only",
    "window_size",
]

#: buffers at least this large travel outside the pickle
OOB_MIN_BYTES = 1 << 16
_MARK = 0
_COUNT = struct.Struct("!BI")
#: set in the count of a message whose buffers are in shared memory (see .shm)
SHARED = 1 << 31


class LargeBuffer(Exception):
    """A buffer too large for the pickle stream turned up: pickle again, out of band."""


def small_only(buffer: pickle.PickleBuffer) -> bool:
    """The small path's buffer callback: in the pickle, unless it is large (then
    :class:`LargeBuffer`: pickle again, out of band)."""
    try:
        size = buffer.raw().nbytes
    except BufferError:
        return True
    if size >= OOB_MIN_BYTES:
        raise LargeBuffer
    return True


def _memoryview_of(buffer: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    view = memoryview(buffer)
    return view if (fmt, shape) == ("B", (view.nbytes,)) else view.cast("B").cast(fmt, shape)  # type: ignore[call-overload]


def _reduce_memoryview(view: memoryview) -> tuple[Any, ...]:
    data: Any = pickle.PickleBuffer(view) if view.contiguous else view.tobytes()
    return (_memoryview_of, (data, view.format, view.shape))


_DISPATCH = copyreg.dispatch_table.copy()
_DISPATCH[memoryview] = _reduce_memoryview


def _pickler(out: io.BytesIO, protocol: int, callback: Any) -> pickle.Pickler:
    pickler = pickle.Pickler(out, max(protocol, 5), buffer_callback=callback)
    pickler.dispatch_table = _DISPATCH
    return pickler


class Pieces:
    """A message in pieces (bytes-like, one byte per item), written with one ``writev``."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes | memoryview]) -> None:
        self.parts = parts
        self.size = sum(len(part) for part in parts)

    def __len__(self) -> int:
        return self.size

    def pieces(self) -> list[bytes | memoryview]:
        return self.parts


class OutOfBand(Pieces):
    """A message with out-of-band buffers: the header, the pickle, the buffers."""

    __slots__ = ("buffer_bytes", "buffers", "pickle")

    def __init__(self, data: bytes | memoryview, buffers: list[memoryview]) -> None:
        self.pickle = data
        self.buffers = buffers
        sizes = [b.nbytes for b in buffers]
        self.buffer_bytes = sum(sizes)
        lengths = [len(data), *sizes]
        head = _COUNT.pack(_MARK, len(buffers)) + struct.pack(f"!{len(lengths)}Q", *lengths)
        super().__init__([head, data, *buffers])


def dumps_oob(
    obj: Any, protocol: int, min_bytes: int | None = None
) -> bytes | memoryview | OutOfBand:
    """``obj`` pickled, its large contiguous buffers kept out of the stream."""
    threshold = OOB_MIN_BYTES if min_bytes is None else min_bytes
    buffers: list[memoryview] = []

    def keep(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()  # contiguous only; anything else stays in the pickle
        except BufferError:
            return True
        if raw.nbytes < threshold:
            return True
        buffers.append(raw)
        return False

    out = io.BytesIO()
    _pickler(out, protocol, keep).dump(obj)
    data = out.getbuffer()
    return OutOfBand(data, buffers) if buffers else data


class SharedReader(Protocol):
    def load(self, data: Any) -> Any: ...


def loads(
    data: bytes | bytearray | memoryview | mmap.mmap, shared: SharedReader | None = None
) -> Any:
    """Unpickle a message, plain or with out-of-band buffers (views of ``data``, or of
    ``shared``, the connection's shared memory: see .shm).

    A malformed header (lengths that do not add up) is a ``ValueError``.
    """
    if not data or data[0] != _MARK:
        return pickle.loads(data)
    if len(data) < _COUNT.size:
        raise ValueError("truncated out-of-band header")
    _, count = _COUNT.unpack_from(data, 0)
    if count & SHARED:
        if shared is None:
            raise ValueError("a shared-memory message on a connection without shared memory")
        return shared.load(data)
    start = _COUNT.size + 8 * (count + 1)
    if count > 1 << 20 or len(data) < start:
        raise ValueError("bad out-of-band header")
    lengths = struct.unpack_from(f"!{count + 1}Q", data, _COUNT.size)
    if start + sum(lengths) != len(data):
        raise ValueError("out-of-band lengths do not match the message")
    view = memoryview(data)
    end = start + lengths[0]
    buffers = []
    for length in lengths[1:]:
        buffers.append(view[end : end + length])
        end += length
    return pickle.loads(view[start : start + lengths[0]], buffers=buffers)


def roundtrip(value: Any) -> Any:
    """``value`` as it would arrive from another process: pickled, its large buffers
    copied once (not twice), so the copy shares no memory with the original."""
    copies: list[bytearray] = []

    def copy(buffer: pickle.PickleBuffer) -> bool:
        try:
            copies.append(bytearray(buffer.raw()))
        except BufferError:
            return True  # not contiguous: in the pickle, as ever
        return False

    out = io.BytesIO()
    _pickler(out, 5, copy).dump(value)
    return pickle.loads(out.getbuffer(), buffers=copies)


def window_size(data: bytes | bytearray | memoryview | mmap.mmap) -> int:
    """A received message's size as its sender counted it (``len`` of what it sent
    before any buffers went to shared memory): what a stream's byte window counts."""
    if len(data) < _COUNT.size or data[0] != _MARK:
        return len(data)
    _, count = _COUNT.unpack_from(data, 0)
    if not count & SHARED:
        return len(data)
    count &= ~SHARED
    # [mark][count][slot u32][block u64][lengths]: the lengths say what was sent in place
    lengths = struct.unpack_from(f"!{count + 1}Q", data, _COUNT.size + 12)
    return int(_COUNT.size + 8 * (count + 1) + sum(lengths))
