"""Run inside a test's network namespace: an owner serving on a non-loopback address,
or a client attaching to it from the other namespace.

Usage:
  python -m tests.support.netns_peer serve HOST PORT KEYFILE [TLS]   (prints "ready PID", waits)
  python -m tests.support.netns_peer call HOST PORT KEYFILE [TLS]    (prints the outcome)
  python -m tests.support.netns_peer session HOST PORT KEYFILE TEXT  (one call with TEXT,
      then one line per "call" read on stdin: "ok", or the error's class name)
"""

from __future__ import annotations

import sys

from rpcgen.runtime import ServiceAuthenticationError, ServiceError
from tests.support.services import Echo


def main() -> None:
    role, host, port, key_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    tls = sys.argv[5] if len(sys.argv) > 5 and role != "session" else "auto"
    if role == "serve":
        with Echo(port, host=host, authkey_file=key_file, tls=tls) as svc:
            print(f"ready {svc.server_pid}", flush=True)
            sys.stdin.read()  # until the test closes stdin or kills us
        return
    try:
        client = Echo.attach(host=host, port=port, authkey_file=key_file, timeout_s=10, tls=tls)
    except ServiceAuthenticationError as exc:
        print(f"authentication refused: {exc}", flush=True)
        return
    except ServiceError as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
        return
    if role == "session":
        text = sys.argv[5]
        print("ok" if client.echo({"card": text}) == {"card": text} else "wrong", flush=True)
        for line in sys.stdin:
            if line.strip() == "call":
                try:
                    print("ok" if client.echo(text) == text else "wrong", flush=True)
                except ServiceError as exc:
                    print(type(exc).__name__, flush=True)
        client.shutdown()
        return
    print(f"answer {client.echo('across the veth')} from {client.remote_pid()}", flush=True)
    client.shutdown()


if __name__ == "__main__":
    main()
