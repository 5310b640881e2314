"""Start helper processes for tests, and always clean them up by pid."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def python_process(*args: str) -> Iterator[subprocess.Popen[str]]:
    """A ``python ARGS...`` child run from the repo root; killed (by pid) on exit."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """Read one stdout line from ``proc`` with a deadline."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"no output from helper within {timeout}s; stderr:\n{err}")
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"helper exited early; stderr:\n{err}")
    return line.strip()
