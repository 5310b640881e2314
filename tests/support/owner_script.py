"""Run as a separate client process: start a service, print its server pid, then wait.

Used to test what happens to a server when its client (owner) process is
SIGKILLed or SIGSTOPped. Usage: python -m tests.support.owner_script PORT METHOD [NAME]
"""

from __future__ import annotations

import sys
import threading

from tests.support.services import Echo


def main() -> None:
    port, method = int(sys.argv[1]), sys.argv[2]
    name = sys.argv[3] if len(sys.argv) > 3 else "Echo"
    svc = Echo(port, start_method=method, name=name)
    print(svc.server_pid, flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
