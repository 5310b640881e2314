"""Bounded waiting: poll a condition under a deadline; never a bare sleep."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

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


def free_port() -> int:
    """A port the OS says is free right now (bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


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
    except FileNotFoundError:
        return ""


def stop_process_now(pid: int, *, timeout: float = 10.0) -> None:
    """SIGSTOP ``pid`` and wait until it is really stopped (the signal acts asynchronously)."""
    import signal

    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: process_state(pid) in ("T", "t"), timeout=timeout, what=f"pid {pid} to stop")
