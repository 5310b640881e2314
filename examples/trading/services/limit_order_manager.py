"""LimitOrderManager service client (yours to edit; rpcgen created it once).

Filling runs here, in the process that owns all three clients: it reads prices
from LivePriceFetcher, asks this service for open orders, applies fills to
PositionManager and marks them filled.
"""

from __future__ import annotations

from typing import Any

from services.limit_order_manager_base import LimitOrderManagerBase


class LimitOrderManager(LimitOrderManagerBase):
    """Client for the LimitOrderManager service."""

    def fill_orders(self, tick: int) -> list[dict[str, Any]]:
        """Fill every open order whose limit the price at ``tick`` reaches."""
        orders = self.open_orders()
        if not orders:
            return []
        prices = self.live_price_fetcher.get_prices(
            sorted({o["symbol"] for o in orders}), tick
        )
        filled = []
        for order in orders:
            price = prices[order["symbol"]]
            buy_ok = order["qty"] > 0 and price <= order["limit_price"]
            sell_ok = order["qty"] < 0 and price >= order["limit_price"]
            if buy_ok or sell_ok:
                self.position_manager.apply_fill(
                    order["key"], order["symbol"], order["qty"], price
                )
                filled.append(self.mark_filled(order["id"], price))
        return filled
