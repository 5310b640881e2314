"""The service spec's model: what a spec may say, as frozen dataclasses and constants.

The spec lives in ``rpcgen.toml`` at the project root, or in ``[tool.rpcgen]`` of
``pyproject.toml`` when that table exists::

    schema_version = 1
    package = "services"          # importable package the code goes into
    tests_dir = "tests"
    host = "127.0.0.1"

    [services.PriceFetcher]
    port = 50001
    # server_module = "services.price_fetcher_server"   (default)
    # server_class = "PriceFetcherServer"               (default)
    start_timeout_s = 10.0
    # max_concurrent_calls = 32   (calls one asyncio connection may run at once)
    # backend = "process"         (or "ray": the server in a named Ray actor)
    depends_on = []

    [services.PriceFetcher.health]
    enabled = true
    interval_s = 60
    max_consecutive_failures = 3
    auto_restart = true

    # backend = "ray" only; every key optional:
    # [services.PriceFetcher.ray]
    # address = "10.0.0.5:6379"     (default: $RAY_ADDRESS, else a local Ray)
    # namespace = "rpcgen"
    # num_cpus = 1
    # num_gpus = 0
    # resources = { node_b = 1 }
    # max_concurrency = 32           (calls the actor runs at once)
    # max_restarts = -1              (Ray restarts a dead actor; -1: always)
    # detached = false               (outlive the program that started it)

This module is the model: frozen dataclasses and the spec's constants.
Validation is :mod:`.spec_check`; finding, reading and editing the file is
:mod:`.spec_file`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rpcgen.runtime.constants import (
    BACKENDS,
    DEFAULT_MAX_CONCURRENT_CALLS,
    MAX_CONCURRENT_CALLS_LIMIT,
)
from rpcgen.runtime.settings import RayOptions

from .naming import snake_case

__all__ = [
    "BACKENDS",
    "DEFAULT_BASE_PORT",
    "DEFAULT_MAX_CONCURRENT_CALLS",
    "MAX_CONCURRENT_CALLS_LIMIT",
    "MAX_NAME_LENGTH",
    "PYPROJECT",
    "SCHEMA_VERSION",
    "SPEC_FILE",
    "HealthSpec",
    "ProjectSpec",
    "RaySpec",
    "ServiceSpec",
    "SpecLocation",
]

SCHEMA_VERSION = 1
DEFAULT_BASE_PORT = 50000
#: Longest service name: its snake-case file names and Unix socket path must fit.
MAX_NAME_LENGTH = 64
SPEC_FILE = "rpcgen.toml"
PYPROJECT = "pyproject.toml"

PROJECT_KEYS = ("schema_version", "package", "tests_dir", "host", "services")
SERVICE_KEYS = (
    "port",
    "server_module",
    "server_class",
    "health",
    "start_timeout_s",
    "max_concurrent_calls",
    "depends_on",
    "backend",
    "ray",
)
HEALTH_KEYS = ("enabled", "interval_s", "max_consecutive_failures", "auto_restart")
RAY_KEYS = (
    "address",
    "namespace",
    "num_cpus",
    "num_gpus",
    "resources",
    "max_concurrency",
    "max_restarts",
    "detached",
)


@dataclass(frozen=True)
class HealthSpec:
    enabled: bool = True
    interval_s: float = 60.0
    max_consecutive_failures: int = 3
    auto_restart: bool = True


_RAY_DEFAULTS = RayOptions()


@dataclass(frozen=True)
class RaySpec:
    """``[services.Name.ray]``: where the actor runs and how Ray keeps it alive."""

    address: str | None = None
    # The defaults are RayOptions' own: one definition for both halves.
    namespace: str = _RAY_DEFAULTS.namespace
    num_cpus: float | None = _RAY_DEFAULTS.num_cpus
    num_gpus: float | None = _RAY_DEFAULTS.num_gpus
    resources: tuple[tuple[str, float], ...] = ()
    max_concurrency: int = _RAY_DEFAULTS.max_concurrency
    max_restarts: int = _RAY_DEFAULTS.max_restarts
    detached: bool = _RAY_DEFAULTS.detached


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port: int
    server_module: str
    server_class: str
    health: HealthSpec = field(default_factory=HealthSpec)
    start_timeout_s: float = 10.0
    depends_on: tuple[str, ...] = ()
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS
    backend: str = "process"
    #: set when backend is "ray" (its defaults when the spec has no ray table)
    ray: RaySpec | None = None

    @property
    def snake(self) -> str:
        return snake_case(self.name)


@dataclass(frozen=True)
class ProjectSpec:
    services: tuple[ServiceSpec, ...]
    package: str = "services"
    tests_dir: str = "tests"
    host: str = "127.0.0.1"
    schema_version: int = SCHEMA_VERSION
    #: Where the spec was read from, for messages (relative, e.g. "rpcgen.toml").
    source: str = SPEC_FILE

    def service(self, name: str) -> ServiceSpec:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)


@dataclass(frozen=True)
class SpecLocation:
    """Where the spec is: a file, and its table path (``()`` or ``("tool", "rpcgen")``)."""

    path: Path
    table: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.path.name if not self.table else f"{self.path.name} [tool.rpcgen]"
