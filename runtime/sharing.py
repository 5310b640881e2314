"""One server, many clients: attaching to a running service, following its restarts,
and stopping a hung server from a process that does not own it.

Every client that does not own its server (attached, unpickled, forked) holds
the service's key, which stays the same across restarts. When its connection
fails it waits, within its timeout, for the owner to publish the restarted
server in the service directory, then reconnects with the same key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .announce import parse_process_title
from .directory import DirectoryEntry, lookup, read_key, wait_for_entry
from .errors import ServiceNotFound
from .poll import wait_until
from .settings import is_loopback

__all__ = ["Located", "locate", "stop_hung_server", "wait_until_published"]


@dataclass(frozen=True)
class Located:
    """Where ``attach()`` found a service, and its key."""

    service: str
    port: int
    #: (host, port), or a Unix socket path
    address: tuple[str, int] | str
    key: bytes
    #: the directory entry (None for a service on another host)
    entry: DirectoryEntry | None


def locate(
    *,
    port: int | None,
    service: str | None,
    host: str | None,
    authkey_file: str | os.PathLike[str] | None,
    timeout_s: float,
) -> Located:
    """Find a running service: on another host by address and key file, here in the
    directory (by port and/or name). Raises ServiceNotFound within ``timeout_s``."""
    if host is not None and not is_loopback(host):
        if port is None or authkey_file is None:
            raise TypeError("attach(host=...) needs port= and authkey_file= too")
        return Located(service or "remote", port, (host, port), read_key(authkey_file), None)
    if port is None and service is None:
        raise TypeError("attach() needs port= or service_name=")
    # Connecting with the key proves the server is live: the caller checks only if that fails.
    entry = lookup(port=port, service=service, check_live=False)
    if entry is None:
        entry = wait_for_entry(port=port, service=service, timeout_s=timeout_s)
    address = entry.address if isinstance(entry.address, str) else (entry.host, entry.port)
    key = read_key(authkey_file or entry.key_file)
    return Located(entry.service, entry.port, address, key, entry)


def wait_until_published(
    service: str,
    port: int,
    timeout_s: float,
    *,
    folder: Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DirectoryEntry | None:
    """The live directory entry of ``service`` on ``port``, waiting up to ``timeout_s``."""
    try:
        return wait_for_entry(
            port=port, service=service, timeout_s=timeout_s, folder=folder, clock=clock, sleep=sleep
        )
    except ServiceNotFound:
        return None


def stop_hung_server(
    service: str,
    port: int,
    *,
    timeout_s: float,
    log: logging.Logger,
    folder: Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Stop the published server of ``service`` on ``port``: SIGTERM, then SIGKILL.

    Only after checking that the pid is still that server (same create time), that
    its process title marks it as this service on this port, and that this user
    owns it. True if it was stopped; its owner then restarts it.
    """
    import psutil

    entry = lookup(port=port, service=service, folder=folder)
    if entry is None:
        log.info("%s: no live server is published; its owner restarts a dead one", service)
        return False
    try:
        process = psutil.Process(entry.pid)
        title = parse_process_title(process.cmdline())
        if (
            title is None
            or (title.service, title.port) != (service, port)
            or process.uids().real != os.getuid()
            or not entry.is_live()
        ):
            log.warning(
                "%s: pid %d is not its server any more; not stopping it", service, entry.pid
            )
            return False
        log.warning(
            "%s: stopping hung server pid %d (owner %d)", service, entry.pid, entry.owner_pid
        )
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)  # a SIGSTOPped process acts on SIGTERM only then
    except psutil.Error:
        return False
    wait_until(
        lambda: not entry.is_live(),
        timeout_s=timeout_s,
        clock=clock,
        sleep=sleep,
        initial=0.01,
        maximum=0.01,
    )
    if entry.is_live():
        with contextlib.suppress(psutil.Error):
            if entry.is_live():  # still the same process: checked by create time
                psutil.Process(entry.pid).kill()
    return True
