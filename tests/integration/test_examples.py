"""Every file in examples/ is run by a test, as a user would run it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.procs import ROOT
from tests.support.waiting import free_port

# module -> lines its output must contain
EXAMPLES: dict[str, list[str]] = {
    "examples.seed_compat.my_new_service": [
        "direct: dep/1/hello",
        "rpc: dep/2/hello",
        "healthy: True",
        "shut down cleanly",
    ],
    "examples.seed_compat.live_price_fetcher": [
        "BTCUSD: 103.0",
        "healthy right after the kill: False",
        "[notify:warning] LivePriceFetcher server restarted",
        "healthy a minute later: True",
        "[notify:success] LivePriceFetcher recovered",
        "shut down cleanly",
    ],
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
def test_example_runs(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for line in EXAMPLES[module]:
        assert line in result.stdout, f"{line!r} missing from:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
