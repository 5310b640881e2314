"""python -m benchmarks [--quick] [--json PATH] [--only GROUP,...]"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path

from . import aio, calls, generator, large, lifecycle, peers, ray, registry, sharing, streams, tls
from ._util import Row

GROUPS = {
    "calls": calls.run,
    "lifecycle": lifecycle.run,
    "registry": registry.run,
    "sharing": sharing.run,
    "aio": aio.run,
    "generator": generator.run,
    "peers": peers.run,
    "ray": ray.run,
    "tls": tls.run,
    "streams": streams.run,
    "large": large.run,
}


def machine() -> dict[str, str | int | None]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "os": platform.platform(),
    }


def render(rows: list[Row]) -> str:
    lines = [f"{'benchmark':<52} {'value':>12}  {'ratio':>14}  target", "-" * 92]
    for row in rows:
        ratio = f"{row.ratio:.3f}x" if row.ratio is not None else ""
        lines.append(
            f"{row.name:<52} {row.value:>10.3f}{row.unit:>2}  {ratio:>14}  {row.target or ''}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run, not figures")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--only", default=",".join(GROUPS), help=f"groups to run: {','.join(GROUPS)}"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin latency runs to one core (see calls.py)"
    )
    args = parser.parse_args(argv)
    calls.PIN = not args.no_pin
    wanted = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in wanted if g not in GROUPS]
    if unknown:
        print(f"unknown benchmark group(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    # The restart benchmark kills servers on purpose; its warnings are not results.
    logging.getLogger("rpcgen").setLevel(logging.ERROR)
    rows: list[Row] = []
    for group in wanted:
        rows += GROUPS[group](args.quick)
    info = machine()
    mode = " [quick]" if args.quick else ""
    print(f"Python {info['python']} on {info['cpus']} CPUs ({info['cpu']}){mode}")
    print(render(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"machine": info, "quick": args.quick, "rows": [r.as_dict() for r in rows]},
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
