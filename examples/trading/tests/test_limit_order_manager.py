"""Tests for the LimitOrderManager service.

Created once by rpcgen; yours to edit. Direct mode runs the server object in
this process (every call round-tripped through pickle, as over RPC); RPC mode
starts the real server process on a free port.
"""

from __future__ import annotations

from services import registry


def test_direct_mode() -> None:
    services = registry.start_all(running_unit_tests=True)
    try:
        client = services.limit_order_manager
        assert client.server_pid is None
    finally:
        services.shutdown()


def test_rpc_mode_runs_a_server_process(rpcgen_services: registry.Services) -> None:
    client = rpcgen_services.limit_order_manager
    assert client.server_pid is not None


def test_health_check(rpcgen_services: registry.Services) -> None:
    assert rpcgen_services.limit_order_manager.health_check() is True


def test_orders_fill_against_prices_and_update_positions(
    rpcgen_services: registry.Services,
) -> None:
    lom = rpcgen_services.limit_order_manager
    price = rpcgen_services.live_price_fetcher.get_price("ETHUSD", 3)
    buy = lom.place("alice", "ETHUSD", 5, price + 1)
    never = lom.place("alice", "ETHUSD", 1, price / 2)
    filled = lom.fill_orders(tick=3)
    assert [o["id"] for o in filled] == [buy]
    assert lom.get_order(never)["status"] == "open"
    assert rpcgen_services.position_manager.get_positions("alice")["ETHUSD"]["qty"] == 5
