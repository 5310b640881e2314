"""A server module that exercises every annotation and signature feature the generator copies."""

from __future__ import annotations

MODELS = '''\
"""Value types shared by the trading server and its clients."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


@dataclass(frozen=True)
class Order:
    symbol: str
    qty: int
'''

SERVER = '''\
"""Trading server with every signature feature rpcgen copies."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Dict, List, Literal, Optional, Union

from rpcgen.runtime import idempotent

from .models import Mode, Order

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

DEFAULT_LIMIT = 10
Side = Literal["buy", "sell"]


class Base:
    def ping_rpc(self) -> str:
        """Answer pong.

        More text that is not copied.
        """
        return "pong"


class TradingServer(Base):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._orders: list[Order] = []

    def health_check_rpc(self) -> dict[str, Any]:
        return {"status": "ok"}

    def place_rpc(
        self, order: Order, side: "Side" = "buy", *, limit: int = DEFAULT_LIMIT, mode: Mode = Mode.FAST
    ) -> Optional[Decimal]:
        """Place an order; returns its price."""
        with self._lock:
            self._orders.append(order)
        return Decimal(order.qty) if side == "buy" and limit > 0 and mode is Mode.FAST else None

    def history_rpc(self, symbols: List[str], since: Optional[dt.datetime] = None) -> Dict[str, List[Order]]:
        with self._lock:
            return {s: [o for o in self._orders if o.symbol == s] for s in symbols}

    def totals_rpc(self, *amounts: Decimal, **tags: str) -> Union[int, float]:
        return float(sum(amounts)) + len(tags)

    def clear_rpc(self, symbol: str, /) -> None:
        with self._lock:
            self._orders = [o for o in self._orders if o.symbol != symbol]

    def bulk_rpc(self, orders: "Sequence[Order]") -> int:
        return len(orders)

    def unannotated_rpc(self, x, y=2):  # type: ignore[no-untyped-def]
        return x

    def shutdown_rpc(self) -> None:
        """Clashes with RPCServiceBase.shutdown: must be skipped."""

    async def stream_rpc(self) -> None:
        """Async: served (the server awaits it)."""

    def ticks_rpc(self, symbol: str, n: int = 3) -> Iterator[Order]:
        """Orders as a feed."""
        for i in range(n):
            yield Order(symbol, i)

    async def aticks_rpc(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @idempotent
    def count_rpc(self) -> int:
        """How many orders (safe to repeat)."""
        with self._lock:
            return len(self._orders)

    def _private_rpc(self) -> None:
        pass

    def helper(self) -> None:
        """Not an RPC method."""
'''

SPEC = """\
schema_version = 1
package = "services"

[services.Trading]
port = {port}
"""
