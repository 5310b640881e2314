"""LimitOrderManager service client (yours to edit; rpcgen created it once).

Filling runs in the LimitOrderManager server (fill_orders), which gets the
LivePriceFetcher and PositionManager clients from rpcgen.
"""

from __future__ import annotations

from services.limit_order_manager_base import LimitOrderManagerBase


class LimitOrderManager(LimitOrderManagerBase):
    """Client for the LimitOrderManager service."""
