"""Generator: `rpcgen new`, `rpcgen generate --check` on 20 services, and `rpcgen --help`
against `python -c "import typer"`, each a whole command as a user runs it."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._util import Row


def _rpcgen() -> list[str]:
    # This interpreter's own script, never PATH's: /usr/bin/rpcgen is the ONC RPC compiler.
    script = Path(sys.executable).parent / "rpcgen"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rpcgen"]


def _time(command: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def run(quick: bool) -> list[Row]:
    rounds = 3 if quick else 10
    rpcgen = _rpcgen()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rpcgen-bench-") as tmp:
        root = Path(tmp)
        new_times = []
        for i in range(rounds):
            project = root / f"new{i}"
            project.mkdir()
            new_times.append(_time([*rpcgen, "new", "Foo", "--port", "50000", "-C", str(project)]))
        big = root / "big"
        big.mkdir()
        for i in range(20):
            _time([*rpcgen, "new", f"Service{i}", "--port", str(50000 + i), "-C", str(big)])
        check_times = [
            _time([*rpcgen, "generate", "--check", "-C", str(big)]) for _ in range(rounds)
        ]
    help_times, typer_times = [], []
    for _ in range(rounds):  # interleaved, so both see the same machine load
        typer_times.append(_time([sys.executable, "-c", "import typer"]))
        help_times.append(_time([*rpcgen, "--help"]))
    typer_ms = statistics.median(typer_times) * 1000
    help_ms = statistics.median(help_times) * 1000
    new_ms = statistics.median(new_times) * 1000
    rows += [
        Row("generator", "rpcgen new (whole command)", new_ms, "ms", target="<= 500 ms"),
        Row(
            "generator",
            "rpcgen generate --check, 20 services",
            statistics.median(check_times) * 1000,
            "ms",
        ),
        Row("generator", 'python -c "import typer"', typer_ms, "ms"),
        Row(
            "generator",
            "rpcgen --help",
            help_ms,
            "ms",
            baseline='python -c "import typer"',
            ratio=help_ms / typer_ms,
            target="<= 1.3x",
        ),
    ]
    return rows
