"""Bounded waiting: poll a condition under a deadline; never a bare sleep."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from rpcgen.runtime import testing

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Return condition()'s first truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


free_port = testing.free_port  # a port the OS says is free right now


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    return process_state(pid) not in ("", "Z")


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def children_of(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def wait_until_dead(pid: int, *, timeout: float = 10.0) -> None:
    wait_until(lambda: not pid_alive(pid), timeout=timeout, what=f"pid {pid} to exit")


def process_state(pid: int) -> str:
    """The one-letter state from /proc (R, S, T, Z, ...); "" if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:  # FileNotFoundError, or ProcessLookupError while it is being reaped
        return ""


def stop_process_now(pid: int, *, timeout: float = 10.0) -> None:
    """SIGSTOP ``pid`` and wait until it is really stopped (the signal acts asynchronously)."""
    import signal

    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: process_state(pid) in ("T", "t"), timeout=timeout, what=f"pid {pid} to stop")
