"""Typed views of a running client's internals, for the integration tests that look inside."""

from __future__ import annotations

from typing import Any

from rpcgen.runtime.process_backend import ProcessBackend
from rpcgen.runtime.proxy import RPCProxy


def rpc_proxy(client: Any) -> RPCProxy:
    """The process backend's proxy (what ``_server_proxy`` returns there)."""
    proxy = client._server_proxy
    assert isinstance(proxy, RPCProxy)
    return proxy


def process_backend(client: Any) -> ProcessBackend:
    backend = client._rpc_backend
    assert isinstance(backend, ProcessBackend)
    return backend
