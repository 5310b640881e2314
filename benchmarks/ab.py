"""A/B of the runtime between a git revision and the working tree, on one pinned core.

    python -m benchmarks.ab --base REV [--rounds 8] [--cpu 1]

Measures the steady call (one echo round trip, sync client) and start -> first
call (a new service process, its first answered call). Each round runs one fresh
child process per side, pinned to one CPU with ``taskset``, in the order A B, then
B A, and so on, so that a noisy machine's drift falls on both sides alike. A child
imports ``rpcgen.runtime`` from its side's tree through a shim package on
``PYTHONPATH``; both run the same benchmark client (benchmarks/_services.py).
Prints each side's median and the B/A ratio (below 1: B is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, socket, sys, time
from benchmarks._services import BenchClient
import rpcgen.runtime

def free_port():  # either side's tree: not every revision has rpcgen.runtime.ports
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
assert rpcgen.runtime.__file__.startswith(sys.argv[1]), rpcgen.runtime.__file__

starts = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    client = BenchClient(free_port())
    client.echo(1)
    starts.append(time.perf_counter() - t0)
    client.shutdown()
client = BenchClient(free_port())
for _ in range(300):
    client.echo(1)
batches = []
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(1000):
        client.echo(1)
    batches.append((time.perf_counter() - t0) / 1000)
client.shutdown()
batches.sort()
starts.sort()
print(json.dumps({"call_us": batches[2] * 1e6, "start_ms": starts[len(starts) // 2] * 1e3}))
"""


def _shim(tree: Path, folder: Path) -> Path:
    """A folder whose ``rpcgen.runtime`` is ``tree/runtime``."""
    package = folder / "rpcgen"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "runtime").symlink_to(tree / "runtime", target_is_directory=True)
    return folder


def _child(shim: Path, cpu: int, starts: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=f"{shim}{os.pathsep}{ROOT}")
    command = [sys.executable, "-c", _CHILD, str(shim / "rpcgen" / "runtime"), str(starts)]
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    out = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("--base", required=True, help="git revision for side A")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--cpu", type=int, default=min(1, (os.cpu_count() or 1) - 1))
    parser.add_argument("--starts", type=int, default=15, help="start -> first call samples")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rpcgen-ab-") as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(base_tree), args.base],
            cwd=ROOT,
            check=True,
        )
        try:
            shims = {
                "A": _shim(base_tree, Path(tmp) / "shim-a"),
                "B": _shim(ROOT, Path(tmp) / "shim-b"),
            }
            samples: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
            started = time.monotonic()
            for n in range(args.rounds):
                for side in ("A", "B") if n % 2 == 0 else ("B", "A"):
                    samples[side].append(_child(shims[side], args.cpu, args.starts))
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False
            )
    report: dict[str, Any] = {
        "base": args.base,
        "rounds": args.rounds,
        "cpu": args.cpu,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"A = {args.base}, B = working tree; {args.rounds} rounds on CPU {args.cpu}")
    for key, label in (("call_us", "steady call (us)"), ("start_ms", "start -> first call (ms)")):
        a = statistics.median(s[key] for s in samples["A"])
        b = statistics.median(s[key] for s in samples["B"])
        per_round = [sb[key] / sa[key] for sa, sb in zip(samples["A"], samples["B"], strict=True)]
        report[key] = {"A": a, "B": b, "ratio": b / a, "round_ratios": per_round}
        spread = f"{min(per_round):.3f}-{max(per_round):.3f}"
        print(f"{label:<26} A {a:8.2f}  B {b:8.2f}  B/A {b / a:.3f}x  (rounds {spread})")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
