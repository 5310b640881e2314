"""Run inside a test's network namespace: an owner serving on a non-loopback address,
or a client attaching to it from the other namespace.

Usage:
  python -m tests.support.netns_peer serve HOST PORT KEYFILE    (prints "ready PID", waits)
  python -m tests.support.netns_peer call HOST PORT KEYFILE     (prints the outcome)
"""

from __future__ import annotations

import sys

from rpcgen.runtime import ServiceAuthenticationError
from tests.support.services import Echo


def main() -> None:
    role, host, port, key_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if role == "serve":
        with Echo(port, host=host, authkey_file=key_file) as svc:
            print(f"ready {svc.server_pid}", flush=True)
            sys.stdin.read()  # until the test closes stdin or kills us
        return
    try:
        client = Echo.attach(host=host, port=port, authkey_file=key_file, timeout_s=10)
    except ServiceAuthenticationError:
        print("authentication refused", flush=True)
        return
    print(f"answer {client.echo('across the veth')} from {client.remote_pid()}", flush=True)
    client.shutdown()


if __name__ == "__main__":
    main()
