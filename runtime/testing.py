"""pytest support for rpcgen services (a pytest plugin, registered as ``rpcgen``).

* :func:`service_fixture` makes a fixture that runs a generated client in direct
  mode, in RPC mode (a real server process on a free port), or both (parametrized).
* :func:`registry_fixture` makes a fixture that starts a whole registry
  (``<package>/registry.py``) on free ports, once per scope.
* ``rpcgen_services`` is a session fixture that starts the project's registry once
  for the whole test session, in RPC mode. The registry module is the ini option
  ``rpcgen_registry``, or ``<package>.registry`` from the project's ``rpcgen.toml``
  (or ``[tool.rpcgen]`` in ``pyproject.toml``).
* ``rpcgen_free_port`` gives a port the OS says is free.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import os
import re
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest

from .ports import free_port, free_ports

__all__ = ["free_port", "free_ports", "registry_fixture", "service_fixture"]

MODES = ("direct", "rpc")
Scope = Literal["session", "package", "module", "class", "function"]


def service_fixture(
    client: Callable[..., Any],
    *,
    modes: Sequence[str] = MODES,
    scope: Scope = "function",
    **kwargs: Any,
) -> Any:
    """A fixture yielding a started client, once per mode in ``modes``.

    Direct mode round-trips every call through pickle (``direct_mode_pickle``),
    so it fails where RPC would. RPC mode starts a server process on a free port.
    """
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown mode(s) {sorted(unknown)}; use {MODES}")

    @pytest.fixture(scope=scope, params=list(modes), ids=list(modes))
    def fixture(request: pytest.FixtureRequest) -> Iterator[Any]:
        if request.param == "direct":
            instance = client(running_unit_tests=True, direct_mode_pickle=True, **kwargs)
        else:
            instance = client(port=free_port(), **_isolated(client, kwargs))
        try:
            yield instance
        finally:
            instance.shutdown()

    return fixture


_test_namespaces = itertools.count(1)


def _isolated(client: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A Ray-backed client gets a namespace of its own: its actor is named after the
    service, so tests running at once (or a live copy of the service) would collide."""
    if kwargs.get("backend", getattr(client, "rpc_backend", "process")) != "ray":
        return kwargs
    if "ray_options" in kwargs:
        return kwargs
    from .settings import RayOptions

    base = getattr(client, "rpc_ray_options", None) or RayOptions()
    space = f"{base.namespace}-test-{os.getpid()}-{next(_test_namespaces)}"
    return {**kwargs, "ray_options": dataclasses.replace(base, namespace=space)}


def registry_fixture(
    registry: ModuleType | str,
    *,
    modes: Sequence[str] = ("rpc",),
    scope: Scope = "session",
    **kwargs: Any,
) -> Any:
    """A fixture that starts every service of ``registry`` (module or module name)."""

    @pytest.fixture(scope=scope, params=list(modes), ids=list(modes))
    def fixture(request: pytest.FixtureRequest) -> Iterator[Any]:
        yield from _run_registry(registry, request.param, kwargs)

    return fixture


def _run_registry(registry: ModuleType | str, mode: str, kwargs: dict[str, Any]) -> Iterator[Any]:
    module = importlib.import_module(registry) if isinstance(registry, str) else registry
    ports = dict(zip(module.SERVICE_NAMES, free_ports(len(module.SERVICE_NAMES)), strict=True))
    services = module.start_all(running_unit_tests=(mode == "direct"), ports=ports, **kwargs)
    try:
        yield services
    finally:
        services.shutdown()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "rpcgen_registry",
        "module of the generated registry for the rpcgen_services fixture "
        "(default: <package>.registry from rpcgen.toml)",
        default="",
    )


def _registry_from_spec(root: Path) -> str:
    for name, table in (("rpcgen.toml", None), ("pyproject.toml", "tool.rpcgen")):
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if table is not None and f"[{table}]" not in text:
            continue
        if table is not None:
            text = text.split(f"[{table}]", 1)[1]
        # Only the top-level `package = "..."` is needed: no TOML library required.
        match = re.search(
            r'^\s*package\s*=\s*["\']([A-Za-z0-9_.]+)["\']', text.split("\n[", 1)[0], re.M
        )
        return f"{match.group(1) if match else 'services'}.registry"
    raise pytest.UsageError(
        "rpcgen_services: no rpcgen.toml or [tool.rpcgen] found; set the ini option rpcgen_registry"
    )


@pytest.fixture(scope="session")
def rpcgen_services(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Every service of the project's registry, started once per test session (RPC mode)."""
    name = request.config.getini("rpcgen_registry") or _registry_from_spec(request.config.rootpath)
    yield from _run_registry(name, "rpc", {})


@pytest.fixture
def rpcgen_free_port() -> int:
    return free_port()


def _asyncio_only() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio: ``client.aio`` is asyncio's.

    anyio's own fixture would also run them on trio wherever trio is installed. A
    project's own ``anyio_backend`` fixture (in a conftest.py) still overrides this.
    """
    return "asyncio"


def pytest_configure(config: pytest.Config) -> None:
    # Registered at configure time, after anyio's plugin, so that this fixture wins. A
    # module, not an object with a fixture method: pytest 9.2 deprecates those.
    if not config.pluginmanager.has_plugin("rpcgen-asyncio-backend"):
        holder = types.ModuleType("rpcgen_asyncio_backend")
        holder.anyio_backend = pytest.fixture(scope="module", name="anyio_backend")(  # type: ignore[attr-defined]
            _asyncio_only
        )
        config.pluginmanager.register(holder, "rpcgen-asyncio-backend")
