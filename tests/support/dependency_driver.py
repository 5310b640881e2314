"""Drive a generated two-service project whose Summarizer server uses DocIndex.

Run as a script with the project folder first on sys.path (``services`` is its
package): ``python dependency_driver.py SCENARIO START_METHOD``. Prints one JSON
object per step; exits non-zero on the first failure. A script of its own, so
that each start method starts from a fresh interpreter (spawn and forkserver
re-import this file in their children: hence the main guard).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

DOC_INDEX_SERVER = '''\
"""DocIndex: keeps documents by id."""

from __future__ import annotations

import os
import threading
from typing import Any


class DocIndexServer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._docs: dict[str, str] = {}

    def health_check_rpc(self) -> dict[str, Any]:
        """Health endpoint."""
        return {"status": "ok"}

    def add_rpc(self, doc_id: str, text: str) -> None:
        """Store a document."""
        with self._lock:
            self._docs[doc_id] = text

    def get_rpc(self, doc_id: str) -> str:
        """One document's text."""
        with self._lock:
            return self._docs[doc_id]

    def pid_rpc(self) -> int:
        """The process that serves it."""
        return os.getpid()
'''

SUMMARIZER_SERVER = '''\
"""Summarizer: summarizes DocIndex's documents, from its own server process."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.doc_index import DocIndex


class SummarizerServer:
    def __init__(self, doc_index: DocIndex) -> None:
        self.doc_index = doc_index

    def health_check_rpc(self) -> dict[str, Any]:
        """Health endpoint."""
        return {"status": "ok"}

    def summarize_rpc(self, doc_id: str, words: int = 2) -> str:
        """The first words of a document, read from DocIndex."""
        return " ".join(self.doc_index.get(doc_id).split()[:words])

    def index_pid_rpc(self) -> int:
        """The DocIndex server process this server reaches."""
        return self.doc_index.pid()

    def pid_rpc(self) -> int:
        """The process that serves it."""
        return os.getpid()
'''


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


def restarted(client: Any, old_pid: int) -> Callable[[], bool]:
    from rpcgen.runtime import ServiceState

    return lambda: client.server_pid not in (None, old_pid) and client.state is ServiceState.RUNNING


def start(method: str, **extra: Any) -> Any:
    from services import registry  # type: ignore[import-not-found]

    from rpcgen.runtime.testing import free_ports

    fast = {"health_check_interval_s": 0.1, "max_consecutive_failures": 1}
    ports = dict(zip(registry.SERVICE_NAMES, free_ports(2), strict=True))
    return registry.start_all(
        ports=ports,
        start_method=method,
        options={name: fast for name in registry.SERVICE_NAMES},
        cleanup_on_signals=False,
        **extra,
    )


def direct() -> None:
    from services import registry

    with registry.start_all(running_unit_tests=True) as services:
        services.doc_index.add("d", "alpha beta gamma")
        say(
            summary=services.summarizer.summarize("d"),
            index_pid=services.summarizer.index_pid(),
            me=os.getpid(),
            server_pid=services.summarizer.server_pid,
        )


def kills(method: str) -> None:
    with start(method) as services:
        index, summarizer = services.doc_index, services.summarizer
        index.add("d", "alpha beta gamma")
        say(
            step="rpc",
            summary=summarizer.summarize("d"),
            index_pid=summarizer.index_pid(),
            doc_index_pid=index.server_pid,
            summarizer_pid=summarizer.server_pid,
            summarizer_self=summarizer.pid(),
        )

        old = index.server_pid
        os.kill(old, signal.SIGKILL)
        wait_for(restarted(index, old), "DocIndex's restart")
        index.add("d", "delta epsilon zeta")  # the restarted DocIndex starts empty
        say(
            step="dependency killed",
            summary=summarizer.summarize("d"),
            index_pid=summarizer.index_pid(),
            doc_index_pid=index.server_pid,
        )

        old = summarizer.server_pid
        os.kill(old, signal.SIGKILL)
        wait_for(restarted(summarizer, old), "Summarizer's restart")
        say(
            step="dependent killed",
            summary=summarizer.summarize("d"),
            index_pid=summarizer.index_pid(),
            doc_index_pid=index.server_pid,
        )

        pids = index.server_pid, summarizer.server_pid
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_for(restarted(index, pids[0]), "DocIndex's restart")
        wait_for(restarted(summarizer, pids[1]), "Summarizer's restart")
        index.add("d", "eta theta iota")
        say(
            step="both killed",
            summary=summarizer.summarize("d"),
            index_pid=summarizer.index_pid(),
            doc_index_pid=index.server_pid,
        )


def two(method: str) -> None:
    from services.doc_index import DocIndex  # type: ignore[import-not-found]

    from rpcgen.runtime import ServiceNotFound

    with start(method) as first, start(method) as second:
        first.doc_index.add("d", "first instance")
        second.doc_index.add("d", "second instance")
        say(
            step="each its own",
            first=first.summarizer.summarize("d"),
            second=second.summarizer.summarize("d"),
            first_index=first.summarizer.index_pid(),
            first_pid=first.doc_index.server_pid,
            second_index=second.summarizer.index_pid(),
            second_pid=second.doc_index.server_pid,
        )
        try:
            DocIndex.attach(timeout_s=5.0)
        except ServiceNotFound as exc:
            say(
                step="attach by name",
                error=str(exc),
                found=[list(f) for f in exc.found],
                ports=sorted([first.doc_index.port, second.doc_index.port]),
            )
        chosen = DocIndex.attach(port=second.doc_index.port)
        say(step="attach by port", text=chosen.get("d"))
        chosen.shutdown()


if __name__ == "__main__":
    scenario, start_method = sys.argv[1], sys.argv[2]
    if scenario == "direct":
        direct()
    elif scenario == "kills":
        kills(start_method)
    else:
        two(start_method)
