"""Large buffers through shared memory, between processes of one user on one host.

A client connecting over loopback TCP or a Unix socket, without TLS, offers two
arenas it makes with ``memfd_create``: requests (it writes, the server reads) and
replies (the server writes, it reads). Each is a sparse file of ``limit`` bytes
(memory is used only where written) that no path names: nothing is ever in
``/dev/shm``, so a container's small ``/dev/shm`` does not matter, and the memory
goes with the last process that holds the file or a mapping of it (a SIGKILLed
side leaves nothing). The file is sealed against shrinking, so a reader's mapping
can never fault (SIGBUS) on a page cut away under it.

The server opens them through ``/proc/<client pid>/fd/<n>``, which the kernel allows
only to a process of the same user (the ptrace read check), after checking each is
a sealed rpcgen memfd of the offered size with the client's random token in it.
Anything else, and the connection uses the socket alone.

A message whose out-of-band buffers (see :mod:`.oob`) add up to
:data:`SHM_MIN_BYTES` or more is sent as a short header and its pickle on the
socket; the buffers sit in one block of the writer's arena (one copy, into memory
that stays allocated for the next message). The reader maps the block
copy-on-write: what it unpickles is a view of the shared pages (no copy), writable
as before, and a write copies only the page it touches, so the writer never sees it.

Lifetime: the block is the reader's until every view of it is gone (a numpy array,
a slice of one, a memoryview: anything made from it keeps it); a finalizer on its
mapping then clears its slot in the arena's header page, and the writer may use
that memory again. The writer allocates around blocks in use; with no room left in
``limit`` bytes (or every slot held), a message goes by the socket. Memory written
once stays allocated, up to the high-water mark, until the connection closes; then
each side gives back (punches out) all of it but the blocks still in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import pickle
import secrets
import stat
import struct
import sys
import threading
import weakref
from typing import Any

from .endpoint import Address, Endpoint, is_loopback
from .oob import SHARED, OutOfBand, Pieces
from .tls import TlsPolicy

__all__ = [
    "SHM_MIN_BYTES",
    "Offer",
    "Reader",
    "SharedLink",
    "Writer",
    "accept",
    "offer",
    "offer_for",
]

logger = logging.getLogger("rpcgen")

#: a message's out-of-band buffers go through shared memory from this total size
SHM_MIN_BYTES = 1 << 18
_PAGE = mmap.ALLOCATIONGRANULARITY
_HEADER = _PAGE  # the header page: magic, token, then one 8-byte word per slot
_MAGIC = b"rpcgenA1"
_TOKEN = 16
_FIRST_SLOT = 64
_SLOTS = (_HEADER - _FIRST_SLOT) // 8
_ALIGN = 64  # each buffer in a block starts on a cache line
_NAME = "rpcgen-arena"
_MAX_LIMIT = 1 << 40
_SEALS = getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_SEAL", 0)
#: [0x00][count | SHARED][slot][block offset]; then lengths (the pickle's, each buffer's)
_HEAD = struct.Struct("!BIIQ")
_WORD = struct.Struct("=Q")

#: (client pid, requests fd, replies fd, token, limit), as the client sends it
Offer = tuple[int, int, int, bytes, int]

_warned: set[str] = set()
#: a block's mapping needs no fd of its own (3.13+; before, each dups the arena's)
_NO_DUP: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create") and bool(_SEALS)


def _warn_once(what: str, exc: BaseException) -> None:
    if what not in _warned:
        _warned.add(what)
        logger.warning(
            "shared memory: %s failed (%s); large buffers go by the socket instead", what, exc
        )


def _aligned(n: int, to: int) -> int:
    return -(-n // to) * to


def _layout(sizes: list[int]) -> tuple[list[int], int]:
    """Each buffer's offset in a block, and the block's size (whole pages)."""
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end = _aligned(end + size, _ALIGN)
    return offsets, _aligned(max(end, 1), _PAGE)


def _punch(fd: int, end: int, keep: list[tuple[int, int]]) -> None:
    """Give back the arena's memory below ``end``, all but the ``keep`` blocks (offset,
    size)."""
    if not end:
        return
    whole = mmap.mmap(fd, _HEADER + end)
    try:
        pos = 0
        for start, size in [*sorted(keep), (end, 0)]:
            if start > pos:
                whole.madvise(mmap.MADV_REMOVE, _HEADER + pos, start - pos)
            pos = max(pos, start + size)
    finally:
        whole.close()


class Writer:
    """The side that writes an arena: allocates blocks, copies buffers in."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd, self.limit = fd, limit
        self.map = mmap.mmap(fd, _HEADER + limit)  # shared: the reader sees what we write
        self.busy: dict[int, tuple[int, int]] = {}  # slot -> (offset, size), the reader's
        self.allocated = 0  # bytes from the start that have pages (posix_fallocate)
        self.lock = threading.Lock()

    def close(self) -> None:
        """Give back all the memory the reader does not hold."""
        with self.lock:
            self._reap()
            _punch(self.fd, self.allocated, list(self.busy.values()))
            self.map.close()

    def _reap(self) -> None:
        words = self.map
        for slot in [s for s in self.busy if not _WORD.unpack_from(words, _FIRST_SLOT + 8 * s)[0]]:
            del self.busy[slot]

    def _room(self, size: int) -> int | None:
        """The lowest offset with ``size`` free bytes (low offsets first: the memory
        in use stays near the start)."""
        pos = 0
        for start, length in sorted(self.busy.values()):
            if start - pos >= size:
                return pos
            pos = max(pos, start + length)
        return pos if self.limit - pos >= size else None

    def _reserve(self, size: int) -> tuple[int, int] | None:
        with self.lock:
            self._reap()
            slot = next((s for s in range(_SLOTS) if s not in self.busy), None)
            offset = None if slot is None else self._room(size)
            if slot is None or offset is None:
                return None
            if offset + size > self.allocated:
                try:  # pages now, or a clean error: never a SIGBUS on a write later
                    os.posix_fallocate(
                        self.fd, _HEADER + self.allocated, offset + size - self.allocated
                    )
                except OSError as exc:
                    _warn_once("allocating memory for a message", exc)
                    return None
                self.allocated = offset + size
            self.busy[slot] = (offset, size)
            _WORD.pack_into(self.map, _FIRST_SLOT + 8 * slot, 1)
            return slot, offset

    def place(self, message: OutOfBand) -> Pieces | None:
        """``message`` with its buffers copied into a block: what goes on the socket.
        None: no room (send ``message`` as it is)."""
        sizes = [b.nbytes for b in message.buffers]
        offsets, size = _layout(sizes)
        reserved = self._reserve(size)
        if reserved is None:
            return None
        slot, block = reserved
        view = memoryview(self.map)
        try:
            for buffer, at in zip(message.buffers, offsets, strict=True):
                start = _HEADER + block + at
                view[start : start + buffer.nbytes] = buffer
        finally:
            view.release()
        count = len(sizes)
        head = _HEAD.pack(0, count | SHARED, slot, block) + struct.pack(
            f"!{count + 1}Q", len(message.pickle), *sizes
        )
        return Pieces([head, message.pickle])


class Reader:
    """The side that reads an arena: maps each message's block copy-on-write."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd, self.limit = fd, limit
        self.header = mmap.mmap(fd, _HEADER)  # shared: to give slots back
        self.held: dict[int, tuple[int, int]] = {}  # slot -> (offset, size): views live
        self.high = 0  # the end of the highest block mapped: nothing was written above it

    def _release(self, slot: int) -> None:
        self.held.pop(slot, None)
        with contextlib.suppress(ValueError, TypeError):  # closed: the connection is gone
            _WORD.pack_into(self.header, _FIRST_SLOT + 8 * slot, 0)

    def close(self) -> None:
        """Give back all the memory no view of ours holds (a writer SIGKILLed never will)."""
        _punch(self.fd, self.high, list(self.held.values()))
        self.header.close()

    def load(self, data: Any) -> Any:
        """Unpickle a shared-memory message (see :func:`.oob.loads`); ``ValueError`` for
        one that does not fit the arena."""
        if len(data) < _HEAD.size:
            raise ValueError("truncated shared-memory header")
        _, count, slot, block = _HEAD.unpack_from(data, 0)
        count &= ~SHARED
        start = _HEAD.size + 8 * (count + 1)
        if count > 1 << 16 or len(data) < start:
            raise ValueError("bad shared-memory header")
        lengths = struct.unpack_from(f"!{count + 1}Q", data, _HEAD.size)
        if start + lengths[0] != len(data):
            raise ValueError("shared-memory message length does not match")
        offsets, size = _layout(list(lengths[1:]))
        if slot >= _SLOTS or block % _PAGE or block + size > self.limit:
            raise ValueError("shared-memory block outside the arena")
        mapped = mmap.mmap(
            self.fd,
            size,
            flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=_HEADER + block,
            **_NO_DUP,
        )
        # Runs when the mapping goes: when the last view made from it does.
        self.held[slot] = (block, size)
        self.high = max(self.high, block + size)
        weakref.finalize(mapped, self._release, slot)
        whole = memoryview(mapped)
        buffers = [whole[at : at + n] for at, n in zip(offsets, lengths[1:], strict=True)]
        whole.release()
        body = memoryview(data)[start:]
        return pickle.loads(body, buffers=buffers)


class SharedLink:
    """One connection's two arenas, from one side: what it writes and what it reads."""

    def __init__(self, writer: Writer, reader: Reader, fds: list[int]) -> None:
        self.writer, self.reader = writer, reader
        self.accepted = False  # the client's: did the server take the offer?
        self._closer = weakref.finalize(self, _close, writer, reader, fds, os.getpid())

    def place(self, message: Any) -> Any:
        """What to send for a reply or request: ``message``, or it through shared memory."""
        if type(message) is OutOfBand and message.buffer_bytes >= SHM_MIN_BYTES:
            return self.writer.place(message) or message
        return message

    def close(self) -> None:
        self._closer()


def _close(writer: Writer, reader: Reader, fds: list[int], pid: int) -> None:
    try:
        if os.getpid() == pid:  # a forked child's copy knows nothing of what is in use
            writer.close()
            reader.close()
    except Exception as exc:  # e.g. a copy under way (BufferError): given back with the arena
        logger.debug("shared memory: giving back an arena's memory failed: %s", exc)
    finally:
        _close_fds(fds)


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _arena(limit: int, token: bytes) -> int:
    fd = os.memfd_create(_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, _HEADER + limit)
        os.pwrite(fd, _MAGIC + token, 0)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def offer_for(address: Address, tls: TlsPolicy, limit: int) -> tuple[SharedLink, Offer] | None:
    """Shared memory to offer a new connection to ``address``: only on this host (loopback
    or a Unix socket), never under TLS, and not with ``limit`` 0."""
    if not limit or tls.applies(address):
        return None
    endpoint = Endpoint.of(address)
    if endpoint.path is None and not is_loopback(endpoint.host):
        return None
    return offer(limit)


def offer(limit: int) -> tuple[SharedLink, Offer] | None:
    """The client's arenas and the offer that names them; None where there can be none."""
    if limit < _PAGE or not supported():
        return None
    token = secrets.token_bytes(_TOKEN)
    fds: list[int] = []
    try:
        fds.append(_arena(limit, token))
        fds.append(_arena(limit, token))
        link = SharedLink(Writer(fds[0], limit), Reader(fds[1], limit), fds)
    except OSError as exc:
        _close_fds(fds)
        _warn_once("making a connection's arena", exc)
        return None
    return link, (os.getpid(), fds[0], fds[1], token, limit)


def _open_peer(pid: int, fd: int, token: bytes, limit: int) -> int:
    path = f"/proc/{pid}/fd/{fd}"
    if not os.readlink(path).startswith(f"/memfd:{_NAME} "):
        raise ValueError("not an rpcgen arena")
    opened = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        info = os.fstat(opened)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.geteuid()
            or info.st_size != _HEADER + limit
            or fcntl.fcntl(opened, fcntl.F_GET_SEALS) & _SEALS != _SEALS
            or os.pread(opened, len(_MAGIC) + _TOKEN, 0) != _MAGIC + token
        ):
            raise ValueError("the arena is not the one offered")
    except BaseException:
        os.close(opened)
        raise
    return opened


def accept(offered: Any) -> SharedLink | None:
    """The server's side of a client's offer, if it checks out; None otherwise."""
    try:
        pid, requests, replies, token, limit = offered
        if not (
            all(type(v) is int for v in (pid, requests, replies, limit))
            and type(token) is bytes
            and len(token) == _TOKEN
            and _PAGE <= limit <= _MAX_LIMIT
            and supported()
        ):
            return None
    except (TypeError, ValueError):
        return None
    fds: list[int] = []
    try:
        fds.append(_open_peer(pid, requests, token, limit))
        fds.append(_open_peer(pid, replies, token, limit))
        return SharedLink(Writer(fds[1], limit), Reader(fds[0], limit), fds)
    except (OSError, ValueError) as exc:
        _close_fds(fds)
        logger.debug("shared memory not used for this connection: %s", exc)
        return None
