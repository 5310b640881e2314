"""PositionManager service client.

Yours to edit: rpcgen created this file once and never touches it again. The
typed RPC methods live in PositionManagerBase, which `rpcgen generate` keeps in
step with PositionManagerServer; add your own helpers here.
"""

from __future__ import annotations

from services.position_manager_base import PositionManagerBase


class PositionManager(PositionManagerBase):
    """Client for the PositionManager service."""
