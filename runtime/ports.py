"""Free ports for tests, benchmarks and demos, chosen where nothing else will take them.

A port from ``bind(port 0)`` lies in the kernel's ephemeral range, the same range
every outgoing connection on the machine takes its local port from. Between the
probe and the server's ``bind`` (a process start later) a client connection,
ours or Ray's, may take it, and the server fails with "Address already in use".
So the ports here come from below that range, where the kernel never hands out a
port on its own, and above 19999, where Ray's workers listen by default; each is
checked free by binding it.
"""

from __future__ import annotations

import contextlib
import random
import socket

__all__ = ["free_port", "free_ports"]

_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_LOWEST = 20000  # Ray's workers take 10002-19999 unless told otherwise
_TRIES = 200


def _listening_range() -> range:
    try:
        with open(_RANGE_FILE) as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    return range(_LOWEST, ephemeral_low)


def _bound(stack: contextlib.ExitStack, taken: set[int]) -> int:
    """A port bound by a socket that ``stack`` holds open; ``taken`` grows by it."""
    candidates = _listening_range()
    for _ in range(_TRIES if len(candidates) > 1000 else 0):
        port = random.choice(candidates)
        if port in taken:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        stack.enter_context(s)
        taken.add(port)
        return port
    # No such range here (not Linux, or a range starting low): the OS's choice.
    s = stack.enter_context(socket.socket())
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    taken.add(port)
    return port


def free_port() -> int:
    """A port free on 127.0.0.1 right now, outside the ephemeral range."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, all held until all are chosen."""
    taken: set[int] = set()
    with contextlib.ExitStack() as stack:
        return [_bound(stack, taken) for _ in range(count)]
