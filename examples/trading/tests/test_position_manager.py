"""Tests for the PositionManager service.

Created once by rpcgen; yours to edit. Direct mode runs the server object in
this process (every call round-tripped through pickle, as over RPC); RPC mode
starts the real server process on a free port.
"""

from __future__ import annotations

from rpcgen.runtime.testing import service_fixture

from services.position_manager import PositionManager

# Runs each test twice: in direct mode and in RPC mode (a real server process).
position_manager = service_fixture(PositionManager)


def test_mode(position_manager: PositionManager) -> None:
    assert (position_manager.server_pid is None) == position_manager.running_unit_tests


def test_health_check(position_manager: PositionManager) -> None:
    assert position_manager.health_check() is True


def test_fills_update_positions(position_manager: PositionManager) -> None:
    key = f"key-{position_manager.running_unit_tests}-{id(position_manager)}"
    position_manager.apply_fill(key, "BTCUSD", 2, 100.0)
    assert position_manager.apply_fill(key, "BTCUSD", 2, 110.0) == {
        "qty": 4,
        "avg_price": 105.0,
    }
    assert position_manager.get_positions(key) == {
        "BTCUSD": {"qty": 4, "avg_price": 105.0}
    }
