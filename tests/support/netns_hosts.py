"""Two "hosts" for tests: network namespaces joined by a veth pair (see
benchmarks/_netns.py, which makes them); skips with a message where they cannot be made.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from benchmarks._netns import NetnsUnavailable
from benchmarks._netns import veth_hosts as _veth_hosts


@contextlib.contextmanager
def veth_hosts(tag: str, octet: int) -> Iterator[tuple[str, str, str, str]]:
    """(namespace A, address A, namespace B, address B), deleted on exit."""
    with contextlib.ExitStack() as stack:
        try:
            found = stack.enter_context(_veth_hosts(tag, octet))
        except NetnsUnavailable as exc:
            pytest.skip(f"network-namespace test: {exc}; skipping")
        yield found
