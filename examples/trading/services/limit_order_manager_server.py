"""LimitOrderManager server: keeps the limit orders, and fills them.

Filling reads prices from LivePriceFetcher and applies fills to PositionManager,
from this server process: the two clients come in through ``__init__`` (the
parameters are named after the services in ``depends_on``, so rpcgen passes
them). They follow their servers' restarts, and this server gets them again
whenever it is restarted itself. Thread safety: one lock guards the orders.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.live_price_fetcher import LivePriceFetcher
    from services.position_manager import PositionManager

Order = dict[str, Any]


class LimitOrderManagerServer:
    def __init__(
        self, live_price_fetcher: LivePriceFetcher, position_manager: PositionManager
    ) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._orders: dict[int, Order] = {}
        self._prices = live_price_fetcher
        self._positions = position_manager

    def health_check_rpc(self) -> dict[str, Any]:
        """Health endpoint used by health_check(): "status" must be "ok"."""
        with self._lock:
            pending = sum(1 for o in self._orders.values() if o["status"] == "open")
        return {
            "status": "ok",
            "timestamp_ms": int(time.time() * 1000),
            "open_orders": pending,
        }

    def place_rpc(self, key: str, symbol: str, qty: float, limit_price: float) -> int:
        """Place a limit order (qty > 0 buys at or below the limit, < 0 sells at or above)."""
        if qty == 0:
            raise ValueError("qty must not be 0")
        with self._lock:
            order_id = next(self._ids)
            self._orders[order_id] = {
                "id": order_id,
                "key": key,
                "symbol": symbol,
                "qty": qty,
                "limit_price": limit_price,
                "status": "open",
                "fill_price": None,
            }
            return order_id

    def open_orders_rpc(self) -> list[Order]:
        """Orders not filled yet, oldest first."""
        with self._lock:
            return [dict(o) for o in self._orders.values() if o["status"] == "open"]

    def mark_filled_rpc(self, order_id: int, price: float) -> Order:
        """Record a fill; returns the order."""
        with self._lock:
            order = self._orders[order_id]
            order["status"], order["fill_price"] = "filled", price
            return dict(order)

    def get_order_rpc(self, order_id: int) -> Order:
        """One order by id."""
        with self._lock:
            return dict(self._orders[order_id])

    def fill_orders_rpc(self, tick: int) -> list[Order]:
        """Fill every open order whose limit the price at ``tick`` reaches; returns them."""
        orders = self.open_orders_rpc()
        if not orders:
            return []
        prices = self._prices.get_prices(sorted({o["symbol"] for o in orders}), tick)
        filled = []
        for order in orders:
            price = prices[order["symbol"]]
            buy_ok = order["qty"] > 0 and price <= order["limit_price"]
            sell_ok = order["qty"] < 0 and price >= order["limit_price"]
            if buy_ok or sell_ok:
                # Positions first: an order marked filled always has its fill applied.
                self._positions.apply_fill(
                    order["key"], order["symbol"], order["qty"], price
                )
                filled.append(self.mark_filled_rpc(order["id"], price))
        return filled
