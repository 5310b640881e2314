"""Print the README's reliability table from RPCGEN_RELIABILITY_REPORT's JSON.

python -m tests.reliability.report reliability.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.reliability.report REPORT.json", file=sys.stderr)
        return 2
    rows = json.loads(Path(argv[0]).read_text())
    print("| scenario | rounds | failures | notes |")
    print("|---|---|---|---|")
    for row in rows:
        notes = "; ".join(dict.fromkeys(row["notes"]))
        print(f"| {row['scenario']} | {row['rounds']} | {row['failures']} | {notes} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
