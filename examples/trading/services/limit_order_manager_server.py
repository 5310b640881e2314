"""LimitOrderManager server: keeps the limit orders.

Filling needs prices and positions from the other two services; that runs in the
LimitOrderManager client (services/limit_order_manager.py), which holds their
clients. Thread safety: one lock guards the orders.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

Order = dict[str, Any]


class LimitOrderManagerServer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._orders: dict[int, Order] = {}

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
