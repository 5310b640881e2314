"""Reliability suite: faults, load and bad input, counted.

Each test records its scenario, rounds and failures with ``reliability_log``;
with RPCGEN_RELIABILITY_REPORT=path set, the counts are written there as JSON at
the end of the session (``python -m tests.reliability.report path`` prints the
README table). A failure count above zero also fails the test.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability


@dataclass
class Entry:
    scenario: str
    rounds: int = 0
    failures: int = 0
    notes: list[str] = field(default_factory=list)


class Log:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def record(self, scenario: str, *, rounds: int, failures: int, note: str = "") -> None:
        with self._lock:
            entry = self.entries.setdefault(scenario, Entry(scenario))
            entry.rounds += rounds
            entry.failures += failures
            if note:
                entry.notes.append(note)


_LOG = Log()


@pytest.fixture
def reliability_log() -> Log:
    return _LOG


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session", autouse=True)
def _write_report() -> Iterator[None]:
    yield
    target = os.environ.get("RPCGEN_RELIABILITY_REPORT")
    if target and _LOG.entries:
        data = [asdict(e) for e in _LOG.entries.values()]
        Path(target).write_text(json.dumps(data, indent=2) + "\n")
