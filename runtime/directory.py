"""The service directory: which services run on this host, for this user, and their keys.

One folder per user, ``$XDG_RUNTIME_DIR/rpcgen`` or ``/tmp/rpcgen-<uid>`` (mode
0700, the folder Unix sockets live in too), holds for each running service:

* ``<Service>-<port>.json`` (0600): name, address, port, server pid and create
  time, owner pid, a start generation (one more at every restart), and the key
  file's path. The owner writes it atomically once its server is ready, and
  removes it when it stops the server for good.
* ``<Service>-<port>.key`` (0600): the service's authkey, 32 random bytes (in the
  form :mod:`rpcgen.runtime.keyfile` reads and writes), kept
  across restarts so that every client (pickled, forked, attached, held by
  another server) reconnects after a restart with the key it has.

The key never appears in an entry, a log line, a process title, a command line
or the environment. Readers ignore and remove stale entries: a dead server pid,
or a pid reused by another process (its create time differs). A killed owner's
key file stays (0600, useless without its server) until the next owner of that
service and port overwrites it: removing it with the entry could race with a new
owner that has written its key but not yet published its entry.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ServiceNotFound
from .keyfile import encode_key
from .transport import default_socket_dir

__all__ = [
    "DirectoryEntry",
    "directory_folder",
    "entries",
    "lookup",
    "proc_stat",
    "publish",
    "wait_for_entry",
    "withdraw",
    "write_service_key",
]


@dataclass(frozen=True)
class DirectoryEntry:
    """One running service, as its owner published it."""

    service: str
    host: str
    port: int
    #: the socket address the server listens on: [host, port], or a Unix socket path
    address: list[Any] | str
    pid: int
    create_time: float
    owner_pid: int
    generation: int
    key_file: str
    #: the server's start time in clock ticks since boot (/proc/PID/stat), 0 if unknown
    start_ticks: int = 0

    @property
    def stem(self) -> str:
        return f"{self.service}-{self.port}"

    def is_live(self) -> bool:
        """The server process still runs (not a zombie), and is the same process."""
        if self.start_ticks:
            stat = proc_stat(self.pid)  # one read: a lookup happens on every reconnect
            return stat is not None and stat[0] != "Z" and stat[1] == self.start_ticks
        import psutil

        try:
            process = psutil.Process(self.pid)
            return (
                abs(process.create_time() - self.create_time) < 0.01
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc/PID/stat; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


_CHECKED: dict[tuple[str | None, int], tuple[Path, int]] = {}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _check_folder(path: Path, fd: int) -> None:
    info = os.fstat(fd)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{path} must belong to this user with mode 0700 (it holds service keys); "
            "fix it, or set XDG_RUNTIME_DIR to a folder of your own"
        )


def _folder(folder: str | os.PathLike[str] | None = None) -> tuple[Path, int]:
    """The folder and an fd of it: opened O_DIRECTORY|O_NOFOLLOW, checked with fstat.

    Every entry and key file is read and written through this fd, so a folder that is
    renamed, replaced or swapped for a symlink afterwards (by a tmp cleaner, or by
    another user where an inherited $XDG_RUNTIME_DIR is theirs) is never written to.
    Opened once per process (and per $XDG_RUNTIME_DIR); a custom ``folder`` each time.
    """
    if folder is not None:
        return _open_checked(Path(folder))
    key = (os.environ.get("XDG_RUNTIME_DIR"), os.getpid())
    found = _CHECKED.get(key)
    if found is not None and not _still_there(*found):
        os.close(_CHECKED.pop(key)[1])  # removed or replaced: look again (and check again)
        found = None
    if found is None:
        found = _CHECKED[key] = _open_checked(Path(default_socket_dir()))
    return found


def _open_checked(path: Path) -> tuple[Path, int]:
    fd = os.open(path, _DIR_FLAGS)
    try:
        _check_folder(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return path, fd


def _still_there(path: Path, fd: int) -> bool:
    """The folder we hold is not deleted, and ``path`` still names it."""
    try:
        held, named = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


@contextlib.contextmanager
def _opened(folder: str | os.PathLike[str] | None) -> Iterator[int]:
    _, fd = _folder(folder)
    try:
        yield fd
    finally:
        if folder is not None:
            os.close(fd)


def directory_folder(folder: str | os.PathLike[str] | None = None) -> Path:
    """The per-user folder (created 0700; refused if another user owns it or it is open)."""
    return _folder(folder)[0] if folder is None else Path(folder)


def _atomic_write(dir_fd: int, name: str, data: bytes) -> None:
    # A random name, created new, never through a symlink: nobody can guess or plant it.
    tmp = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, _NEW_FILE, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def publish(entry: DirectoryEntry, folder: Path | None = None) -> Path:
    """Write (or replace) ``entry`` atomically; readers never see half of it.

    The folder's owner and mode are checked again first: it is ours, or nothing is written.
    """
    name = f"{entry.stem}.json"
    with _opened(folder) as fd:
        _check_folder(directory_folder(folder), fd)
        _atomic_write(fd, name, json.dumps(asdict(entry), sort_keys=True).encode())
    return directory_folder(folder) / name


def write_service_key(service: str, port: int, key: bytes, folder: Path | None = None) -> Path:
    """Write the service's key file (0600) beside its entry; its path, for the entry."""
    name = f"{service}-{port}.key"
    with _opened(folder) as fd:
        _check_folder(directory_folder(folder), fd)
        _atomic_write(fd, name, encode_key(key))
    return directory_folder(folder) / name


def withdraw(service: str, port: int, pid: int, folder: Path | None = None) -> None:
    """Remove the entry of ``service`` on ``port``, if it still names server ``pid``."""
    name = f"{service}-{port}.json"
    with _opened(folder) as fd:
        entry = _read_entry(fd, name)
        if entry is not None and entry.pid == pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)


def _read_entry(dir_fd: int, name: str) -> DirectoryEntry | None:
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                return None  # nothing of another user's is trusted
            raw = os.read(fd, 65536)
        finally:
            os.close(fd)
        data = json.loads(raw)
        return DirectoryEntry(
            service=str(data["service"]),
            host=str(data["host"]),
            port=int(data["port"]),
            address=data["address"],
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            owner_pid=int(data["owner_pid"]),
            generation=int(data["generation"]),
            key_file=str(data["key_file"]),
            start_ticks=int(data.get("start_ticks", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def entries(folder: Path | None = None, *, live_only: bool = True) -> list[DirectoryEntry]:
    """Every entry, sorted; stale ones (dead or reused pid) are removed, not returned."""
    found: list[DirectoryEntry] = []
    with _opened(folder) as fd:
        for name in sorted(os.listdir(fd)):
            if not name.endswith(".json"):
                continue
            entry = _read_entry(fd, name)
            if entry is None:
                continue
            if live_only and not entry.is_live():
                with contextlib.suppress(OSError):
                    if _read_entry(fd, name) == entry:  # not replaced meanwhile
                        os.unlink(name, dir_fd=fd)
                continue
            found.append(entry)
    return found


def lookup(
    *,
    port: int | None = None,
    service: str | None = None,
    folder: Path | None = None,
    check_live: bool = True,
) -> DirectoryEntry | None:
    """The live entry for ``port`` and/or ``service``; None if there is none.

    With only ``service``, it must be unambiguous: one live entry of that name.
    ``check_live=False`` (with both given) skips the liveness check, for a caller
    whose next step, connecting with the key, proves it anyway.
    """
    if port is not None and service is not None:
        with _opened(folder) as fd:
            entry = _read_entry(fd, f"{service}-{port}.json")
        if entry is None or (check_live and not entry.is_live()):
            return None
        return entry
    matches = [
        e
        for e in entries(folder, live_only=False)
        if (port is None or e.port == port) and (service is None or e.service == service)
    ]
    live = [e for e in matches if e.is_live()]
    return live[0] if len(live) == 1 else None


def wait_for_entry(
    *,
    port: int | None,
    service: str | None,
    timeout_s: float,
    newer_than: int = -1,
    folder: Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DirectoryEntry:
    """Poll until a live entry (with a generation above ``newer_than``) is published.

    Raises :class:`ServiceNotFound` at the deadline.
    """
    deadline = clock() + timeout_s
    delay = 0.002
    while True:
        entry = lookup(port=port, service=service, folder=folder)
        if entry is not None and entry.generation > newer_than:
            return entry
        if entry is None and port is None and service is not None:
            # Several of that name: waiting cannot make the choice, the caller can.
            live = [e for e in entries(folder) if e.service == service]
            if len(live) > 1:
                raise ServiceNotFound(
                    service=service,
                    port=None,
                    timeout_s=timeout_s,
                    found=sorted((e.port, e.owner_pid) for e in live),
                )
        if clock() >= deadline:
            raise ServiceNotFound(service=service, port=port, timeout_s=timeout_s)
        sleep(delay)
        delay = min(delay * 2, 0.05)
