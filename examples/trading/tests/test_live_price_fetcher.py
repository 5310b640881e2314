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


def test_stream_prices_is_a_live_feed(live_price_fetcher: LivePriceFetcher) -> None:
    feed = list(live_price_fetcher.stream_prices(["BTCUSD"], first_tick=3, ticks=4))
    assert [tick for tick, _ in feed] == [3, 4, 5, 6]
    assert feed[0][1] == live_price_fetcher.get_prices(["BTCUSD"], tick=3)
    for tick, _ in live_price_fetcher.stream_prices(["BTCUSD"], ticks=1000, interval_s=0.01):
        if tick == 2:
            break  # leaving the loop stops the server's feed
