"""A plain socket server (not rpcgen) that listens on a port until killed."""

from __future__ import annotations

import socket
import sys
import threading


def main() -> None:
    port = int(sys.argv[1])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        print("listening", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
