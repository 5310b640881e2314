"""Shared test setup: positions go to a temp folder, never the working tree."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def trading_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Session-scoped and autouse, so it is set before any server process starts.
    path = str(tmp_path_factory.mktemp("trading-data"))
    previous = os.environ.get("TRADING_DATA_DIR")
    os.environ["TRADING_DATA_DIR"] = path
    yield path
    if previous is None:
        del os.environ["TRADING_DATA_DIR"]
    else:
        os.environ["TRADING_DATA_DIR"] = previous
