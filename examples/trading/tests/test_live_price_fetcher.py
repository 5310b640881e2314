"""Tests for the LivePriceFetcher service.

Created once by rpcgen; yours to edit. Direct mode runs the server object in
this process (every call round-tripped through pickle, as over RPC); RPC mode
starts the real server process on a free port.
"""

from __future__ import annotations

from rpcgen.runtime.testing import service_fixture

from services.live_price_fetcher import LivePriceFetcher

# Runs each test twice: in direct mode and in RPC mode (a real server process).
live_price_fetcher = service_fixture(LivePriceFetcher)


def test_mode(live_price_fetcher: LivePriceFetcher) -> None:
    assert (
        live_price_fetcher.server_pid is None
    ) == live_price_fetcher.running_unit_tests


def test_health_check(live_price_fetcher: LivePriceFetcher) -> None:
    assert live_price_fetcher.health_check() is True


def test_prices_are_deterministic(live_price_fetcher: LivePriceFetcher) -> None:
    first = live_price_fetcher.get_prices(["BTCUSD", "ETHUSD"], tick=7)
    assert first == live_price_fetcher.get_prices(["BTCUSD", "ETHUSD"], tick=7)
    assert first["BTCUSD"] == live_price_fetcher.get_price("BTCUSD", 7)
    assert first["BTCUSD"] != live_price_fetcher.get_price("BTCUSD", 8)
