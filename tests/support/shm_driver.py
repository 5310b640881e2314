"""A client process for shared-memory tests that need a process of their own.

    python -m tests.support.shm_driver fsize        # files limited to 1 MiB (RLIMIT_FSIZE)
    python -m tests.support.shm_driver echo MIB     # as it is (the test may have set
                                                    # up a tiny /dev/shm around it)

Starts a Buffers service, echoes arrays from three threads, prints one JSON line:
whether every echo came back equal, whether results came through shared memory,
and how many shared-memory warnings were logged.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import threading

import numpy

from rpcgen.runtime.ports import free_port
from tests.support.stream_services import Buffers, in_shared_memory


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "shared memory" in record.getMessage():
            self.warnings.append(record.getMessage())


def main(mode: str, mib: int) -> None:
    counter = _Count()
    logging.getLogger("rpcgen").addHandler(counter)
    if mode == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death, past the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    client = Buffers(free_port())
    results: list[tuple[bool, bool]] = []
    try:

        def echo(seed: int) -> None:
            array = numpy.random.default_rng(seed).integers(0, 255, mib << 20, numpy.uint8)
            for _ in range(3):
                out = client.server.echo_rpc(array)
                results.append((bool(numpy.array_equal(out, array)), in_shared_memory(out)))

        threads = [threading.Thread(target=echo, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        client.shutdown()
    print(
        json.dumps(
            {
                "echoes": len(results),
                "equal": all(ok for ok, _ in results),
                "shared": [shared for _, shared in results],
                "warnings": counter.warnings,
                "dev_shm": sorted(os.listdir("/dev/shm")),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4)
