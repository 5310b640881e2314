"""Validating a spec: every problem at once, one line each, naming the file, the
service and the field (:class:`~rpcgen.generator.errors.SpecError`).

Settings the runtime checks too are checked with the runtime's own rules
(:func:`rpcgen.runtime.settings.ray_option_problems`), so both halves agree.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from rpcgen.runtime.settings import ray_option_problems

from .errors import SpecError, SpecIssue
from .naming import STDLIB_MODULES, is_capwords, is_dotted_identifier, is_identifier, snake_case
from .spec import (
    BACKENDS,
    DEFAULT_MAX_CONCURRENT_CALLS,
    HEALTH_KEYS,
    MAX_CONCURRENT_CALLS_LIMIT,
    MAX_NAME_LENGTH,
    PROJECT_KEYS,
    RAY_KEYS,
    SCHEMA_VERSION,
    SERVICE_KEYS,
    SPEC_FILE,
    HealthSpec,
    ProjectSpec,
    RaySpec,
    ServiceSpec,
)

__all__ = ["parse_spec"]

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def _close(key: str, allowed: tuple[str, ...]) -> str:
    match = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else f"; allowed: {', '.join(allowed)}"


def _is_number(value: Any) -> bool:
    """A finite int or float (TOML also has inf and nan, which no setting here means)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_host(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(value))


class _Checker:
    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[SpecIssue] = []

    def add(self, message: str, *, service: str | None = None, field: str | None = None) -> None:
        self.issues.append(SpecIssue(self.file, message, service=service, field=field))

    def unknown(
        self, data: Mapping[str, Any], allowed: tuple[str, ...], service: str | None, prefix: str
    ) -> None:
        for key in data:
            if key not in allowed:
                self.add(f"unknown key{_close(key, allowed)}", service=service, field=prefix + key)


def parse_spec(data: Mapping[str, Any], file: str = SPEC_FILE) -> ProjectSpec:
    """Validate plain spec data (as parsed from TOML) into a :class:`ProjectSpec`."""
    c = _Checker(file)
    if not isinstance(data, Mapping):
        raise SpecError([SpecIssue(file, "the spec must be a table")])
    c.unknown(data, PROJECT_KEYS, None, "")

    version = data.get("schema_version")
    if version is None:
        c.add(f"missing; add schema_version = {SCHEMA_VERSION}", field="schema_version")
    elif version != SCHEMA_VERSION or isinstance(version, bool):
        c.add(f"must be {SCHEMA_VERSION}, got {version!r}", field="schema_version")

    package = data.get("package", "services")
    if not isinstance(package, str) or not is_dotted_identifier(package):
        c.add(f"must be a dotted module path like 'services', got {package!r}", field="package")
        package = "services"
    elif _shadowed(package):
        c.add(
            f"{package!r} would shadow the module {package.split('.')[0]!r} (standard library "
            "or rpcgen); choose another package name",
            field="package",
        )
        package = "services"
    tests_dir = data.get("tests_dir", "tests")
    if not isinstance(tests_dir, str) or not _is_relative_dir(tests_dir):
        c.add(f"must be a relative folder inside the project, got {tests_dir!r}", field="tests_dir")
        tests_dir = "tests"
    host = data.get("host", "127.0.0.1")
    if not _is_host(host):
        c.add(f"must be a host name or IP address, got {host!r}", field="host")
        host = "127.0.0.1"

    raw_services = data.get("services", {})
    if not isinstance(raw_services, Mapping):
        c.add("must be a table of [services.Name] tables", field="services")
        raw_services = {}
    services = [
        svc
        for name, body in raw_services.items()
        if (svc := _parse_service(c, str(name), body, package)) is not None
    ]
    # Declared names, parsed or not: a service with errors of its own is reported once,
    # not again as an "unknown service" in every depends_on that names it.
    _check_across(c, services, package, declared={str(name) for name in raw_services})
    if c.issues:
        raise SpecError(c.issues)
    return ProjectSpec(
        services=tuple(services),
        package=package,
        tests_dir=str(PurePosixPath(tests_dir)),
        host=host,
        schema_version=SCHEMA_VERSION,
        source=file,
    )


def _reserved_attributes() -> frozenset[str]:
    # A dependency's client is passed to (and stored on) its dependent under its
    # snake-case name, so that name must not shadow the base class's own attributes.
    from .introspect import reserved_client_names

    return reserved_client_names()


def _shadowed(module: str) -> bool:
    return module.split(".")[0] in STDLIB_MODULES | {"rpcgen"}


def _is_relative_dir(text: str) -> bool:
    path = PurePosixPath(text)
    return bool(text) and not path.is_absolute() and ".." not in path.parts and "\\" not in text


def _parse_service(c: _Checker, name: str, body: Any, package: str) -> ServiceSpec | None:
    ok = True
    if not is_capwords(name):
        c.add(
            "name must be a CapWords identifier, like PriceFetcher",
            service=repr(name[:MAX_NAME_LENGTH]),
            field="name",
        )
        return None
    if len(name) > MAX_NAME_LENGTH:
        c.add(
            f"name is {len(name)} characters long; use at most {MAX_NAME_LENGTH}",
            service=name[:MAX_NAME_LENGTH] + "...",
            field="name",
        )
        return None
    snake = snake_case(name)
    if snake == "registry" or snake in _reserved_attributes():
        what = (
            "the generated registry module"
            if snake == "registry"
            else "an RPCServiceBase attribute"
        )
        c.add(
            f"name clashes with {what} ({snake!r}); choose another name",
            service=name,
            field="name",
        )
        ok = False
    if snake in STDLIB_MODULES:
        c.add(
            f"name clashes with the standard library module {snake!r}; choose another name",
            service=name,
            field="name",
        )
        ok = False
    if not isinstance(body, Mapping):
        c.add("must be a table", service=name)
        return None
    c.unknown(body, SERVICE_KEYS, name, "")

    port = body.get("port")
    if port is None:
        c.add("missing; every service needs a port", service=name, field="port")
        ok = False
    elif not isinstance(port, int) or isinstance(port, bool) or not 1024 <= port <= 65535:
        c.add(f"must be an integer from 1024 to 65535, got {port!r}", service=name, field="port")
        ok = False

    server_module = body.get("server_module", f"{package}.{snake}_server")
    if not isinstance(server_module, str) or not is_dotted_identifier(server_module):
        c.add(
            f"must be a dotted module path like '{package}.{snake}_server', got {server_module!r}",
            service=name,
            field="server_module",
        )
        ok = False
    elif _shadowed(server_module):
        c.add(
            f"{server_module!r} is a standard library or rpcgen module; name your own module",
            service=name,
            field="server_module",
        )
        ok = False
    server_class = body.get("server_class", f"{name}Server")
    if not isinstance(server_class, str) or not is_identifier(server_class):
        c.add(f"must be a class name, got {server_class!r}", service=name, field="server_class")
        ok = False

    start_timeout = body.get("start_timeout_s", 10.0)
    if not _is_number(start_timeout) or start_timeout <= 0:
        c.add(
            f"must be a positive number, got {start_timeout!r}",
            service=name,
            field="start_timeout_s",
        )
        ok = False

    concurrent = body.get("max_concurrent_calls", DEFAULT_MAX_CONCURRENT_CALLS)
    if (
        not isinstance(concurrent, int)
        or isinstance(concurrent, bool)
        or not 1 <= concurrent <= MAX_CONCURRENT_CALLS_LIMIT
    ):
        c.add(
            f"must be an integer from 1 to {MAX_CONCURRENT_CALLS_LIMIT}, got {concurrent!r}",
            service=name,
            field="max_concurrent_calls",
        )
        ok = False

    depends_on = body.get("depends_on", [])
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        c.add("must be a list of service names", service=name, field="depends_on")
        ok, depends_on = False, []

    backend = body.get("backend", "process")
    ray: RaySpec | None = None
    if backend not in BACKENDS:
        c.add(
            f"must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}",
            service=name,
            field="backend",
        )
        ok = False
    elif backend == "ray":
        if "max_concurrent_calls" in body:
            c.add(
                'applies only to backend = "process"; a Ray actor takes ray.max_concurrency',
                service=name,
                field="max_concurrent_calls",
            )
            ok = False
        ray = _parse_ray(c, name, body.get("ray", {}))
        ok = ok and ray is not None
    elif "ray" in body:
        c.add(
            'Ray settings apply only to backend = "ray" (this service runs in a process); '
            'add backend = "ray" or remove the table',
            service=name,
            field="ray",
        )
        ok = False

    health = _parse_health(c, name, body.get("health", {}))
    if health is None or not ok:
        return None
    return ServiceSpec(
        name=name,
        port=int(port),  # type: ignore[arg-type]
        server_module=str(server_module),
        server_class=str(server_class),
        health=health,
        start_timeout_s=float(start_timeout),
        depends_on=tuple(depends_on),
        max_concurrent_calls=int(concurrent),
        backend=str(backend),
        ray=ray,
    )


def _parse_ray(c: _Checker, name: str, body: Any) -> RaySpec | None:
    if not isinstance(body, Mapping):
        c.add("must be a table", service=name, field="ray")
        return None
    c.unknown(body, RAY_KEYS, name, "ray.")
    before = len(c.issues)
    address = body.get("address")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        c.add(
            f"must be a Ray address like '10.0.0.5:6379' or 'auto', got {address!r}",
            service=name,
            field="ray.address",
        )
    # The rest are RayOptions: the runtime's own rules, one definition for both halves.
    for key, problem in ray_option_problems({k: v for k, v in body.items() if k != "address"}):
        c.add(problem, service=name, field=f"ray.{key}")
    if len(c.issues) != before:
        return None
    defaults = RaySpec()
    num_cpus, num_gpus = body.get("num_cpus"), body.get("num_gpus")
    return RaySpec(
        address=str(address) if address is not None else None,
        namespace=str(body.get("namespace", defaults.namespace)),
        num_cpus=float(num_cpus) if num_cpus is not None else None,
        num_gpus=float(num_gpus) if num_gpus is not None else None,
        resources=tuple(sorted((str(k), float(v)) for k, v in body.get("resources", {}).items())),
        max_concurrency=int(body.get("max_concurrency", defaults.max_concurrency)),
        max_restarts=int(body.get("max_restarts", defaults.max_restarts)),
        detached=bool(body.get("detached", defaults.detached)),
    )


def _parse_health(c: _Checker, name: str, body: Any) -> HealthSpec | None:
    if not isinstance(body, Mapping):
        c.add("must be a table", service=name, field="health")
        return None
    c.unknown(body, HEALTH_KEYS, name, "health.")
    before = len(c.issues)
    defaults = HealthSpec()
    enabled = body.get("enabled", defaults.enabled)
    auto_restart = body.get("auto_restart", defaults.auto_restart)
    interval = body.get("interval_s", defaults.interval_s)
    failures = body.get("max_consecutive_failures", defaults.max_consecutive_failures)
    for key, value in (("enabled", enabled), ("auto_restart", auto_restart)):
        if not isinstance(value, bool):
            c.add(f"must be true or false, got {value!r}", service=name, field=f"health.{key}")
    if not _is_number(interval) or interval <= 0:
        c.add(
            f"must be a positive number, got {interval!r}", service=name, field="health.interval_s"
        )
    if not isinstance(failures, int) or isinstance(failures, bool) or failures <= 0:
        c.add(
            f"must be a positive integer, got {failures!r}",
            service=name,
            field="health.max_consecutive_failures",
        )
    if len(c.issues) != before:
        return None
    return HealthSpec(bool(enabled), float(interval), int(failures), bool(auto_restart))


def _check_across(
    c: _Checker, services: list[ServiceSpec], package: str, declared: set[str]
) -> None:
    by_port: dict[int, str] = {}
    by_snake: dict[str, str] = {}
    files: dict[str, str] = {}
    names = {s.name for s in services} | declared
    for svc in services:
        if svc.port in by_port:
            c.add(
                f"port {svc.port} is also used by {by_port[svc.port]}",
                service=svc.name,
                field="port",
            )
        by_port.setdefault(svc.port, svc.name)
        if svc.snake in by_snake:
            c.add(
                f"name clashes with {by_snake[svc.snake]} (both become module {svc.snake!r})",
                service=svc.name,
                field="name",
            )
        by_snake.setdefault(svc.snake, svc.name)
        for module in (f"{package}.{svc.snake}", f"{package}.{svc.snake}_base", svc.server_module):
            owner = files.get(module)
            if owner is not None and owner != svc.name:
                c.add(
                    f"module {module!r} would be written for both {owner} and {svc.name}; "
                    "rename one",
                    service=svc.name,
                    field="name",
                )
            files.setdefault(module, svc.name)
        for dep in svc.depends_on:
            if dep not in names:
                c.add(
                    f"unknown service {dep!r}{_close(dep, tuple(sorted(names)))}",
                    service=svc.name,
                    field="depends_on",
                )
            elif dep == svc.name:
                c.add("a service cannot depend on itself", service=svc.name, field="depends_on")
    cycle = _find_cycle({s.name: s.depends_on for s in services})
    if cycle:
        c.add(f"dependency cycle: {' -> '.join(cycle)}", service=cycle[0], field="depends_on")


def _find_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, ()):
            if dep == node or dep not in graph:
                continue
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None
