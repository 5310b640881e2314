"""Two "hosts" on one machine: network namespaces joined by a veth pair.

Test-only private addresses, assigned only inside the namespaces; nothing connects to
them from the root namespace (it has a default route: such a connect would leave the
machine). Needs root and iproute2: :class:`NetnsUnavailable` says why not otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no `ip`, or refused)."""


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@contextmanager
def veth_hosts(tag: str, octet: int) -> Iterator[tuple[str, str, str, str]]:
    """(namespace A, address A, namespace B, address B) in 10.<octet>.x.0/24; both
    namespaces (and the veth pair with them) are deleted on exit."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        raise NetnsUnavailable("needs root and iproute2's `ip`; not available here")
    tag = f"{tag}{os.getpid() % 100000}"
    ns_a, ns_b = f"rpcgenA{tag}", f"rpcgenB{tag}"
    veth_a, veth_b = f"rva{tag}", f"rvb{tag}"
    subnet = 1 + os.getpid() % 250
    addr_a, addr_b = f"10.{octet}.{subnet}.1", f"10.{octet}.{subnet}.2"
    created: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            result = ip("netns", "add", ns)
            if result.returncode != 0:
                raise NetnsUnavailable(f"`ip netns add` failed here ({result.stderr.strip()})")
            created.append(ns)
        steps = [
            ("link", "add", veth_a, "type", "veth", "peer", "name", veth_b),
            ("link", "set", veth_a, "netns", ns_a),
            ("link", "set", veth_b, "netns", ns_b),
            ("-n", ns_a, "addr", "add", f"{addr_a}/24", "dev", veth_a),
            ("-n", ns_b, "addr", "add", f"{addr_b}/24", "dev", veth_b),
            ("-n", ns_a, "link", "set", veth_a, "up"),
            ("-n", ns_b, "link", "set", veth_b, "up"),
            ("-n", ns_a, "link", "set", "lo", "up"),
            ("-n", ns_b, "link", "set", "lo", "up"),
        ]
        for step in steps:
            result = ip(*step)
            if result.returncode != 0:
                raise RuntimeError(f"ip {' '.join(step)}: {result.stderr}")
        yield ns_a, addr_a, ns_b, addr_b
    finally:
        for ns in created:
            ip("netns", "del", ns)  # takes the veth pair with it
