"""Start the test registry in a separate process, print the server pids, wait for a signal."""

from __future__ import annotations

import json
import sys
import threading

from rpcgen.runtime.testing import free_ports
from tests.support import registry_services


def main() -> None:
    names = registry_services.SERVICE_NAMES
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    services = registry_services.start_all(ports=ports)
    print(json.dumps({attr: client.server_pid for attr, client in services}), flush=True)
    threading.Event().wait(60)
    sys.exit(3)  # never reached in the tests: they signal first


if __name__ == "__main__":
    main()
