"""Run inside a private mount namespace whose /etc/hosts puts ``::1 localhost`` first
(as stock Debian and Ubuntu do): own a service on host "localhost" and call it.

Usage: python -m tests.support.hosts_victim PORT. Prints one JSON line.
"""

from __future__ import annotations

import json
import socket
import sys

from tests.support.services import Echo


def main() -> None:
    port = int(sys.argv[1])
    first = socket.getaddrinfo("localhost", port, 0, socket.SOCK_STREAM)[0][4][0]
    with Echo(port, host="localhost") as svc:
        answer = svc.echo("to my own server")
        print(json.dumps({"localhost_first": first, "answer": answer}), flush=True)


if __name__ == "__main__":
    main()
