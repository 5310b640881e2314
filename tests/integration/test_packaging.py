"""Import isolation and the public API surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import rpcgen.runtime


def test_importing_the_runtime_never_imports_generator_dependencies() -> None:
    code = (
        "import sys, rpcgen.runtime\n"
        "bad = sorted(m for m in ('jinja2', 'typer', 'black', 'tomlkit', 'merge3', 'click',"
        " 'cryptography')"
        " if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def _public_names(package: ModuleType) -> set[str]:
    """The package's public names, less its own submodules."""
    # "@py_builtins" & co.: pytest's assertion rewriting, which also covers the modules of
    # a distribution that ships a pytest plugin (ours does), adds them to the namespace.
    public = {n for n in dir(package) if not n.startswith(("_", "@"))}
    assert package.__file__ is not None
    return public - {p.stem for p in Path(package.__file__).parent.glob("*.py")}


def test_all_matches_the_public_names() -> None:
    assert set(rpcgen.runtime.__all__) == _public_names(rpcgen.runtime)
    assert sorted(rpcgen.runtime.__all__) == list(rpcgen.runtime.__all__)


def test_the_generator_exports_its_api_like_the_runtime() -> None:
    import rpcgen.generator

    public = _public_names(rpcgen.generator)
    assert set(rpcgen.generator.__all__) == public
    assert sorted(rpcgen.generator.__all__) == list(rpcgen.generator.__all__)
    assert {"generate", "new_service", "plan_generate", "RpcgenError"} <= public


def test_runtime_internals_are_not_public() -> None:
    internals = {
        "cleanup_stale",
        "cleanup_stale_server",
        "find_listeners",
        "list_servers",
        "port_is_free",
        "unix_socket_in_use",
        "wait_port_free",
        "ServerProcess",
        "ServerTitle",
        "parse_process_title",
        "process_title",
        "RPCProxy",
        "PicklingProxy",
        "NotificationDispatcher",
    }
    assert not internals & set(rpcgen.runtime.__all__)
    # What generated code imports from the runtime stays public.
    generated_uses = {"Address", "AsyncView", "ReadySignal", "RPCServiceBase", "serve_rpc"}
    generated_uses |= {"RayOptions", "ServiceGraph", "ServiceNode", "StartedServices"}
    assert generated_uses <= set(rpcgen.runtime.__all__)
