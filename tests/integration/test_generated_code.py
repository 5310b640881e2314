"""Generated code as it comes out: black, ruff (current defaults) and mypy --strict clean,
and it really works, under spawn too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rpcgen.generator.api import generate, new_service
from tests.support.procs import run_project_tests
from tests.support.project import write
from tests.support.trading_fixture import MODELS, SERVER, SPEC
from tests.support.typecheck import rpcgen_shim, run_mypy, run_ruff
from tests.support.waiting import free_port

MYPY_CONFIG = """\
[tool.mypy]
strict = true

[[tool.mypy.overrides]]
# The user's own server module is not held to --strict here (it is loose on
# purpose); the generated files are.
module = "services.{server}"
ignore_errors = true
"""


@pytest.fixture
def trading(tmp_path: Path) -> Path:
    write(tmp_path, "rpcgen.toml", SPEC.format(port=free_port()))
    write(tmp_path, "services/__init__.py", '"""Services."""\n')
    write(tmp_path, "services/models.py", MODELS)
    write(tmp_path, "services/trading_server.py", SERVER)
    write(tmp_path, "pyproject.toml", MYPY_CONFIG.format(server="trading_server"))
    generate(tmp_path)
    return tmp_path


def test_signatures_annotations_and_imports_are_copied(trading: Path) -> None:
    text = (trading / "services/trading_base.py").read_text()
    expected = [
        "    from services.trading_server import Side, TradingServer",
        "import datetime as dt",
        "from decimal import Decimal",
        "from services.models import Order",
        "from collections.abc import AsyncIterator, Iterator, Sequence",
        "from services.models import Mode\n",  # runtime import: a default uses it
        '        side: Side = "buy",',
        "        limit: int = 10,",  # literal constant inlined
        "        mode: Mode = Mode.FAST,",
        "    ) -> Decimal | None:",
        '        """Place an order; returns its price."""',
        "        return self._server_proxy.place_rpc(order, side, limit=limit, mode=mode)",
        "self, symbols: list[str], since: dt.datetime | None = None",
        ") -> dict[str, list[Order]]:",
        "def totals(self, *amounts: Decimal, **tags: str) -> int | float:",
        "return self._server_proxy.totals_rpc(*amounts, **tags)",
        "def clear(self, symbol: str, /) -> None:",
        "        self._server_proxy.clear_rpc(symbol)\n",  # -> None: a bare call
        "def bulk(self, orders: Sequence[Order]) -> int:",
        "def unannotated(self, x: Any, y: Any = 2) -> Any:",
        '        """Answer pong."""',
        "def ticks(self, symbol: str, n: int = 3) -> Iterator[Order]:",  # a stream
        "def ticks(self, symbol: str, n: int = 3) -> AsyncIterator[Order]:",  # its aio view
        "return self._rpc_stream(self._rpc_server.ticks_rpc, symbol, n)",
        "def aticks(self, n: int) -> Iterator[int]:",  # an async generator streams too
        "async def stream(self) -> None:",  # async def: served
        'rpc_idempotent_methods = ("count_rpc",)',
    ]
    for fragment in expected:
        assert fragment in text, fragment
    for absent in (
        "def shutdown(",
        "_private",
        "def helper",
        "def health_check(",
        "Optional",
        "List[",
    ):
        assert absent not in text


def test_skipped_methods_are_reported(trading: Path) -> None:
    notes = generate(trading, dry_run=True).plan.notes
    assert any("skipped shutdown_rpc()" in n and "clash with RPCServiceBase" in n for n in notes)
    assert not any("stream_rpc" in n for n in notes)  # async def methods are served


@pytest.mark.slow
def test_generated_files_pass_black_ruff_and_mypy_strict(
    trading: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    generated = ["services/trading_base.py", "services/trading.py", "tests/test_trading.py"]
    black = subprocess.run(
        [sys.executable, "-m", "black", "--check", *generated],
        cwd=trading,
        capture_output=True,
        text=True,
    )
    assert black.returncode == 0, black.stderr
    ruff = run_ruff(["check", "--no-cache", "--isolated", *generated], trading)
    assert ruff.returncode == 0, ruff.stdout
    shim = rpcgen_shim(tmp_path_factory.mktemp("shim"))
    mypy = run_mypy(["--cache-dir", str(trading / ".mypy_cache"), *generated], trading, shim)
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr


@pytest.mark.slow
def test_a_ray_backed_client_passes_black_ruff_and_mypy_strict(
    trading: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spec = trading / "rpcgen.toml"
    spec.write_text(
        spec.read_text()
        + 'backend = "ray"\n\n[services.Trading.ray]\naddress = "auto"\nnum_cpus = 0.5\n'
        + "resources = { node_b = 1 }\nmax_concurrency = 8\ndetached = true\n"
    )
    generate(trading)
    base = "services/trading_base.py"
    assert 'rpc_backend = "ray"' in (trading / base).read_text()
    black = subprocess.run(
        [sys.executable, "-m", "black", "--check", base],
        cwd=trading,
        capture_output=True,
        text=True,
    )
    assert black.returncode == 0, black.stderr
    ruff = run_ruff(["check", "--no-cache", "--isolated", base], trading)
    assert ruff.returncode == 0, ruff.stdout
    shim = rpcgen_shim(tmp_path_factory.mktemp("shim"))
    mypy = run_mypy(["--cache-dir", str(trading / ".mypy_cache"), base], trading, shim)
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr


CALLS = """\
import asyncio
import sys
from decimal import Decimal
from services.models import Order
from services.trading import Trading

t = Trading(port=int(sys.argv[1]), start_method=sys.argv[2])
try:
    assert t.ping() == "pong"
    assert t.place(Order("BTC", 3)) == Decimal(3)
    assert t.place(Order("ETH", 1), "sell") is None
    assert t.history(["BTC"]) == {"BTC": [Order("BTC", 3)]}
    assert t.totals(Decimal(1), Decimal(2), a="x") == 4.0
    t.clear("BTC")
    assert t.history(["BTC"]) == {"BTC": []}
    assert t.bulk([Order("A", 1)]) == 1
    assert t.unannotated(7) == 7
    assert t.health_check() is True
    assert [o.qty for o in t.ticks("X")] == [0, 1, 2]
    assert list(t.aticks(3)) == [0, 1, 2]
    t.stream()
    assert t.count() == 1

    async def aio_calls() -> None:
        assert await t.aio.ping() == "pong"
        assert await t.aio.place(Order("SOL", 2)) == Decimal(2)
        assert await t.aio.totals(Decimal(1), Decimal(2), a="x") == 4.0
        await t.aio.clear("SOL")
        assert await t.aio.history(["SOL"]) == {"SOL": []}
        assert await t.aio.unannotated(7) == 7
        many = await asyncio.gather(*(t.aio.unannotated(i, y=i) for i in range(200)))
        assert many == list(range(200))
        assert [o.qty async for o in t.aio.ticks("X", 2)] == [0, 1]
        await t.aio.stream()
        assert await t.aio.count() == 1

    asyncio.run(aio_calls())
    print("ok", t.server_pid)
finally:
    t.shutdown()
"""


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_generated_client_works_under_every_start_method(trading: Path, method: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CALLS, str(free_port()), method],
        cwd=trading,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok ")


@pytest.mark.slow
def test_new_project_end_to_end_generated_tests_pass(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    new_service(tmp_path, "Foo", port=free_port())
    result = run_project_tests(tmp_path)
    # mode, health and the async test, each in direct and RPC mode; none of them uses the
    # example echo_rpc, which the server skeleton tells the user to replace
    assert "6 passed" in result.stdout
    files = ["services", "tests"]
    assert (
        subprocess.run(
            [sys.executable, "-m", "black", "--check", *files], cwd=tmp_path, capture_output=True
        ).returncode
        == 0
    )
    ruff = run_ruff(["check", "--no-cache", "--isolated", *files], tmp_path)
    assert ruff.returncode == 0, ruff.stdout
    mypy = run_mypy(
        ["--strict", "--cache-dir", str(tmp_path / ".mypy_cache"), *files],
        tmp_path,
        rpcgen_shim(tmp_path_factory.mktemp("shim")),
    )
    assert mypy.returncode == 0, mypy.stdout


AIO_USE = """\
from decimal import Decimal
from typing import Any

from services.models import Order
from services.trading import Trading


async def main(t: Trading) -> None:
    price: Decimal | None = await t.aio.place(Order("BTC", 3), "sell", limit=2)
    total: int | float = await t.aio.totals(Decimal(1), a="x")
    await t.aio.clear("BTC")
    anything: Any = await t.aio.unannotated(7)
    print(price, total, anything)
"""

AIO_MISUSE = """\
from services.trading import Trading


async def wrong(t: Trading) -> None:
    await t.aio.place("not an order")
    count: str = await t.aio.bulk([])
    await t.aio.clear(symbol="BTC")
    print(count)
"""


@pytest.mark.slow
def test_the_async_view_is_typed_against_the_server_methods(
    trading: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    write(trading, "use_aio.py", AIO_USE)
    write(trading, "misuse_aio.py", AIO_MISUSE)
    shim = rpcgen_shim(tmp_path_factory.mktemp("shim"))
    cache = ["--cache-dir", str(trading / ".mypy_cache")]
    good = run_mypy([*cache, "use_aio.py"], trading, shim)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = run_mypy([*cache, "misuse_aio.py"], trading, shim)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = {line.split(":")[1] for line in bad.stdout.splitlines() if ": error:" in line}
    assert lines == {"5", "6", "7"}, bad.stdout


LOOSE_SERVER = '''\
"""A server module in upstream's loose style: implicit Optional, bare generics, untyped
parameters, **kwargs."""

from typing import Callable, Dict, List, Optional


class LooseServer:
    def window_rpc(self, hotkey: str, current_time: int = None, names: list = None) -> dict:
        return {"hotkey": hotkey, "t": current_time, "names": names}

    def batch_rpc(self, rows: List, by: Dict = None, *, limit: int = None) -> set:
        return set()

    def apply_rpc(self, fn: Callable, items: tuple, key: Optional[str] = None) -> List:
        return []

    def loose_rpc(self, a, b=None, **kwargs) -> Optional[dict]:
        return None

    def pairs_rpc(self, mapping: "Dict[str, list]", default: str = None) -> "tuple":
        return ()
'''


@pytest.mark.slow
def test_a_loose_server_module_gives_strict_clean_generated_code(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Issue 21: upstream's style (implicit Optional, bare generics) is made strict in the
    generated signatures only."""
    write(tmp_path, "rpcgen.toml", SPEC.replace("Trading", "Loose").format(port=free_port()))
    write(tmp_path, "services/__init__.py", '"""Services."""\n')
    write(tmp_path, "services/loose_server.py", LOOSE_SERVER)
    write(tmp_path, "pyproject.toml", MYPY_CONFIG.format(server="loose_server"))
    generate(tmp_path)
    base = (tmp_path / "services" / "loose_base.py").read_text()
    assert "current_time: int | None = None" in base
    assert "names: list[Any] | None = None" in base
    assert "limit: int | None = None" in base
    assert "fn: Callable[..., Any]" in base and "items: tuple[Any, ...]" in base
    assert "-> dict[Any, Any]:" in base and "-> set[Any]:" in base
    generated = [str(p.relative_to(tmp_path)) for p in (tmp_path / "services").glob("loose*.py")]
    generated = [g for g in generated if not g.endswith("loose_server.py")]
    ruff = run_ruff(["check", "--no-cache", "--isolated", *generated], tmp_path)
    assert ruff.returncode == 0, ruff.stdout
    mypy = run_mypy(
        ["--cache-dir", str(tmp_path / ".mypy_cache"), *generated],
        tmp_path,
        rpcgen_shim(tmp_path_factory.mktemp("shim")),
    )
    assert mypy.returncode == 0, mypy.stdout


@pytest.mark.slow
def test_replacing_the_example_method_keeps_the_generated_tests_passing(tmp_path: Path) -> None:
    """Issue 21: the skeleton says to replace echo_rpc; the generated tests must not need it."""
    new_service(tmp_path, "Foo", port=free_port())
    server = tmp_path / "services" / "foo_server.py"
    text = server.read_text()
    start = text.index("    def echo_rpc")
    end = text.find("\n\n", start)
    server.write_text(
        text[:start]
        + '    def shout_rpc(self, word: str) -> str:\n        """Loud."""\n'
        + "        return word.upper()\n"
        + (text[end:] if end >= 0 else "")
    )
    generate(tmp_path)
    assert "6 passed" in run_project_tests(tmp_path).stdout
