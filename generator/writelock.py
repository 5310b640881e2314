"""One writer at a time per project: an advisory ``flock`` on the project folder.

Two ``rpcgen new`` run at once would each read the spec, add their service and
write it back: the later write drops the earlier service, whose files are then
orphaned. Every command that writes holds this lock from its first read to its
last write; read-only commands (``--check``, ``--dry-run``, ``--diff``, ``list``)
take none. The lock is on the folder itself, so no lock file is left behind, and
the kernel drops it when the process dies, even by ``kill -9``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ProjectBusy

__all__ = ["WAIT_S", "project_write_lock"]

#: How long a second writer waits for the first before it gives up.
WAIT_S = 10.0


@contextmanager
def project_write_lock(
    root: Path,
    *,
    timeout_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold the project's write lock; wait up to ``timeout_s``, then raise ProjectBusy."""
    wait = WAIT_S if timeout_s is None else timeout_s
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        deadline = clock() + wait
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            if clock() >= deadline:
                raise ProjectBusy(root=str(root), waited_s=wait)
            sleep(delay)
            delay = min(delay * 2, 0.2)
        yield
    finally:
        os.close(fd)  # releases the lock
