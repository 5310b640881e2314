"""Start helper processes for tests, and always clean them up by pid."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_LINES: dict[int, queue.Queue[str | None]] = {}


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line.rstrip("\n"))
    lines.put(None)  # EOF


@contextmanager
def python_process(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A ``python ARGS...`` child run from the repo root; killed (by pid) on exit.

    A thread reads its stdout line by line, so :func:`read_line` can wait for a line
    with a deadline (select() on the pipe would miss lines already buffered).
    """
    base = os.environ if env is None else env
    env = dict(base, PYTHONPATH=str(ROOT) + os.pathsep + base.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    _LINES[proc.pid] = lines
    reader = threading.Thread(target=_pump, args=(proc, lines), daemon=True)
    reader.start()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        reader.join(10)
        # A grandchild (a server) may still hold the pipe: closing a stream that the
        # reader thread is blocked on would block too, so leave that one to the GC.
        streams = (
            (proc.stdin, proc.stderr)
            if reader.is_alive()
            else (proc.stdin, proc.stdout, proc.stderr)
        )
        for stream in streams:
            if stream is not None:
                stream.close()
        _LINES.pop(proc.pid, None)


def read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """The next stdout line of ``proc``, waiting at most ``timeout`` seconds."""
    try:
        line = _LINES[proc.pid].get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"no output from helper within {timeout}s") from None
    if line is None:
        proc.wait(10)
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"helper exited early (code {proc.returncode}); stderr:\n{err}")
    return line.strip()


def finish(proc: subprocess.Popen[str], stdin: str = "", timeout: float = 60.0) -> tuple[int, str]:
    """Send ``stdin``, wait for exit; return (exit code, the rest of stdout)."""
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    code = proc.wait(timeout)
    rest: list[str] = []
    lines = _LINES[proc.pid]
    while (line := lines.get(timeout=timeout)) is not None:
        rest.append(line)
    return code, "\n".join(rest)


def clean_pytest_env() -> dict[str, str]:
    """This environment without PYTEST_* variables, for a pytest run of its own
    (under xdist they would make the inner run think it is an xdist worker)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


_PROJECT_ARGS = ("-q", "-W", "error", "tests")


def run_project_tests(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A generated project's own tests, as its user runs them; by default -W error: no
    warning either (pytest 9.2 deprecates fixtures on plugin objects). Fails the calling
    test if they fail."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *(args or _PROJECT_ARGS)],
        cwd=root,
        env=clean_pytest_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result
