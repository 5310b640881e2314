"""LivePriceFetcher service client.

Yours to edit: rpcgen created this file once and never touches it again. The
typed RPC methods live in LivePriceFetcherBase, which `rpcgen generate` keeps in
step with LivePriceFetcherServer; add your own helpers here.
"""

from __future__ import annotations

from services.live_price_fetcher_base import LivePriceFetcherBase


class LivePriceFetcher(LivePriceFetcherBase):
    """Client for the LivePriceFetcher service."""
