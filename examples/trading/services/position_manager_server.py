"""PositionManager server: positions per key, persisted as JSON and reloaded on start.

The data folder comes from $TRADING_DATA_DIR (default ./trading-data); the
environment reaches the server process under every start method. Every change
is written atomically (temp file + rename) before the call returns, so a killed
server loses nothing it acknowledged.

Thread safety: the RPC server calls these methods from several threads at once;
one lock guards the positions.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

Position = dict[str, float]  # {"qty": ..., "avg_price": ...}


def data_dir() -> Path:
    return Path(os.environ.get("TRADING_DATA_DIR", "trading-data"))


class PositionManagerServer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path = data_dir() / "positions.json"
        self._positions: dict[str, dict[str, Position]] = {}
        if self._path.exists():
            self._positions = json.loads(self._path.read_text())

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._positions, indent=2, sort_keys=True))
        os.replace(tmp, self._path)

    def health_check_rpc(self) -> dict[str, Any]:
        """Health endpoint used by health_check(): "status" must be "ok"."""
        with self._lock:
            keys = len(self._positions)
        return {"status": "ok", "timestamp_ms": int(time.time() * 1000), "keys": keys}

    def apply_fill_rpc(
        self, key: str, symbol: str, qty: float, price: float
    ) -> Position:
        """Add a fill (qty > 0 buys, < 0 sells) to a key's position; returns the position."""
        with self._lock:
            book = self._positions.setdefault(key, {})
            position = book.get(symbol, {"qty": 0.0, "avg_price": 0.0})
            old_qty, new_qty = position["qty"], position["qty"] + qty
            if old_qty == 0 or old_qty * new_qty < 0:  # opened, or flipped side
                avg = price
            elif abs(new_qty) > abs(old_qty):  # added to the position
                avg = round(
                    (old_qty * position["avg_price"] + qty * price) / new_qty, 6
                )
            else:  # reduced it: the average entry price stays
                avg = position["avg_price"]
            position = {"qty": new_qty, "avg_price": avg if new_qty else 0.0}
            book[symbol] = position
            self._save()
            return dict(position)

    def get_positions_rpc(self, key: str) -> dict[str, Position]:
        """A key's positions by symbol."""
        with self._lock:
            return {s: dict(p) for s, p in self._positions.get(key, {}).items()}

    def snapshot_rpc(self) -> dict[str, dict[str, Position]]:
        """Every key's positions."""
        with self._lock:
            return {
                key: {s: dict(p) for s, p in book.items()}
                for key, book in self._positions.items()
            }
