"""Start the test registry in a separate process, print the server pids, wait for a signal."""

from __future__ import annotations

import json
import sys
import threading

from tests.support import registry_services
from tests.support.waiting import free_port


def main() -> None:
    ports = {name: free_port() for name in registry_services.SERVICE_NAMES}
    services = registry_services.start_all(ports=ports)
    print(json.dumps({attr: client.server_pid for attr, client in services}), flush=True)
    threading.Event().wait(60)
    sys.exit(3)  # never reached in the tests: they signal first


if __name__ == "__main__":
    main()
