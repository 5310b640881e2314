"""LivePriceFetcher server: synthetic, deterministic prices (no network here).

Thread safety: the RPC server calls these methods from several threads at once;
this server keeps no mutable state except a counter guarded by a lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any

from rpcgen.runtime import current_call, idempotent


def synthetic_price(symbol: str, tick: int) -> float:
    """A price that depends only on the symbol and the tick: the same in every process."""
    base = 50.0 + sum(map(ord, symbol)) % 200
    return round(base * (1.0 + 0.05 * math.sin(tick / 3.0)), 2)


class LivePriceFetcherServer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0

    def health_check_rpc(self) -> dict[str, Any]:
        """Health endpoint used by health_check(): "status" must be "ok"."""
        with self._lock:
            requests = self._requests
        return {
            "status": "ok",
            "timestamp_ms": int(time.time() * 1000),
            "requests": requests,
        }

    @idempotent
    def get_price_rpc(self, symbol: str, tick: int = 0) -> float:
        """Latest price of a symbol at a tick."""
        with self._lock:
            self._requests += 1
        return synthetic_price(symbol, tick)

    @idempotent
    def get_prices_rpc(self, symbols: list[str], tick: int = 0) -> dict[str, float]:
        """Prices of several symbols at a tick."""
        with self._lock:
            self._requests += len(symbols)
        return {symbol: synthetic_price(symbol, tick) for symbol in symbols}

    def stream_prices_rpc(
        self, symbols: list[str], first_tick: int = 0, ticks: int = 10, interval_s: float = 0.0
    ) -> Iterator[tuple[int, dict[str, float]]]:
        """A live feed: (tick, prices) for ``ticks`` ticks, one every ``interval_s``."""
        for tick in range(first_tick, first_tick + ticks):
            yield tick, self.get_prices_rpc(symbols, tick)
            # wakes at once if the consumer stops reading the feed (its call is cancelled)
            if interval_s and current_call().wait_cancelled(interval_s):
                return
