"""Every file in examples/ is run by a test, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import ROOT
from tests.support.waiting import free_port

# module -> (arguments, lines its output must contain)
EXAMPLES: dict[str, tuple[list[str], list[str]]] = {
    "examples.seed_compat.my_new_service": (
        ["--port", "{port}"],
        [
            "direct: dep/1/hello",
            "rpc: dep/2/hello",
            "healthy: True",
            "shut down cleanly",
        ],
    ),
    "examples.seed_compat.live_price_fetcher": (
        ["--port", "{port}"],
        [
            "BTCUSD: 103.0",
            "restarted by its owner as pid",
            "healthy right after the restart: True",
            "[notify:warning] LivePriceFetcher server restarted",
            "healthy a minute later: True",
            "[notify:success] LivePriceFetcher recovered",
            "shut down cleanly",
        ],
    ),
    "examples.trading.demo": (
        ["--free-ports", "--data-dir", "{tmp}"],
        [
            "started live_price_fetcher",
            "filled 2 orders; order 3 still open",
            "killed LivePriceFetcher server",
            "[notify:warning] LivePriceFetcher server restarted",
            "[notify:success] LivePriceFetcher recovered",
            "LivePriceFetcher restarted by its health monitor",
            "no position lost",
            "shut down cleanly: no server process left",
        ],
    ),
}


def _example_modules() -> set[str]:
    found = set()
    for path in (ROOT / "examples").rglob("*.py"):
        if path.name == "__init__.py" or "_gen" in path.parts:
            continue
        text = path.read_text()
        if '__name__ == "__main__"' in text:
            found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def test_every_runnable_example_has_a_test() -> None:
    assert _example_modules() == set(EXAMPLES)


@pytest.mark.parametrize("module", sorted(EXAMPLES))
def test_example_runs(module: str, tmp_path: Path) -> None:
    arguments, expected = EXAMPLES[module]
    args = [a.format(port=free_port(), tmp=tmp_path) for a in arguments]
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for line in expected:
        assert line in result.stdout, f"{line!r} missing from:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr


def test_the_trading_demo_removes_the_data_folder_it_made(tmp_path: Path) -> None:
    """Without --data-dir it makes a temp folder; it must not leave it behind."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.trading.demo", "--free-ports"],
        cwd=ROOT,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "data dir: " + str(tmp_path) in result.stdout
    assert not list(tmp_path.glob("trading-data-*"))
