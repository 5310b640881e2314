"""The service spec: where it lives, what it may say, and how ``rpcgen new`` edits it.

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

Validation reports every problem at once, one line each, naming the file, the
service and the field. Edits go through tomlkit, so comments and order survive.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import SpecError, SpecIssue
from .naming import STDLIB_MODULES, is_capwords, is_dotted_identifier, is_identifier, snake_case

__all__ = [
    "DEFAULT_BASE_PORT",
    "MAX_NAME_LENGTH",
    "SCHEMA_VERSION",
    "HealthSpec",
    "NewService",
    "ProjectSpec",
    "RaySpec",
    "ServiceSpec",
    "SpecLocation",
    "add_service",
    "find_spec",
    "load_spec",
    "parse_spec",
]

SCHEMA_VERSION = 1
DEFAULT_BASE_PORT = 50000
#: Longest service name: its snake-case file names and Unix socket path must fit.
MAX_NAME_LENGTH = 64
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
SPEC_FILE = "rpcgen.toml"
PYPROJECT = "pyproject.toml"

_PROJECT_KEYS = ("schema_version", "package", "tests_dir", "host", "services")
_SERVICE_KEYS = (
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
#: The server's default for ``max_concurrent_calls`` (rpcgen.runtime.serve).
DEFAULT_MAX_CONCURRENT_CALLS = 32
MAX_CONCURRENT_CALLS_LIMIT = 1024
_HEALTH_KEYS = ("enabled", "interval_s", "max_consecutive_failures", "auto_restart")
BACKENDS = ("process", "ray")
_RAY_KEYS = (
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


@dataclass(frozen=True)
class RaySpec:
    """``[services.Name.ray]``: where the actor runs and how Ray keeps it alive."""

    address: str | None = None
    namespace: str = "rpcgen"
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: tuple[tuple[str, float], ...] = ()
    max_concurrency: int = DEFAULT_MAX_CONCURRENT_CALLS
    max_restarts: int = -1
    detached: bool = False


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


def find_spec(root: Path) -> SpecLocation | None:
    """The spec's location under ``root``, or None if there is none yet."""
    own = root / SPEC_FILE
    pyproject = root / PYPROJECT
    in_pyproject = False
    if pyproject.is_file():
        data = _parse_toml(read_spec_text(pyproject).text, pyproject.name)
        in_pyproject = isinstance(data.get("tool"), dict) and "rpcgen" in data["tool"]
    if own.is_file() and in_pyproject:
        raise SpecError(
            [
                SpecIssue(
                    SPEC_FILE,
                    "the spec is defined both here and in pyproject.toml [tool.rpcgen]; keep one",
                )
            ]
        )
    if own.is_file():
        return SpecLocation(own, ())
    if in_pyproject:
        return SpecLocation(pyproject, ("tool", "rpcgen"))
    return None


@dataclass(frozen=True)
class SpecText:
    """A TOML file's text (BOM removed, LF), and how to write it back as it was."""

    text: str
    bom: bool = False
    crlf: bool = False

    def restore(self, text: str) -> str:
        if self.crlf:
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        return ("\ufeff" if self.bom else "") + text


def read_spec_text(path: Path) -> SpecText:
    """Read a TOML file as text; one-line SpecError if it is not UTF-8."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            raw = f.read()
    except UnicodeDecodeError as exc:
        raise SpecError(
            [
                SpecIssue(
                    path.name,
                    f"not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8",
                )
            ]
        ) from exc
    bom = raw.startswith("\ufeff")
    text = raw[1:] if bom else raw
    crlf = "\r\n" in text
    return SpecText(text.replace("\r\n", "\n") if crlf else text, bom, crlf)


def _parse_toml(text: str, label: str) -> dict[str, Any]:
    data: dict[str, Any] = _parse_doc(text, label).unwrap()
    return data


def _parse_doc(text: str, label: str) -> Any:
    """A tomlkit document (keeps comments), or a one-line SpecError naming line and column."""
    import tomlkit
    from tomlkit.exceptions import ParseError

    try:
        return tomlkit.parse(text)
    except ParseError as exc:
        line, col = getattr(exc, "line", None), getattr(exc, "col", None)
        where = f"{label}:{line}:{col}" if line else label
        message = str(exc).split(" at line ")[0]
        raise SpecError([SpecIssue(where, f"malformed TOML: {message}")]) from exc


def _table(data: Mapping[str, Any], table: tuple[str, ...]) -> Any:
    node: Any = data
    for key in table:
        node = node[key]
    return node


def load_spec(root: Path) -> ProjectSpec:
    """Read and validate the spec under ``root``; raise :class:`SpecError` if absent or bad."""
    location = find_spec(root)
    if location is None:
        raise SpecError(
            [
                SpecIssue(
                    SPEC_FILE,
                    f"no spec found in {root}: run `rpcgen new NAME` to create one, or add "
                    "[tool.rpcgen] to pyproject.toml",
                )
            ]
        )
    data = _parse_toml(read_spec_text(location.path).text, location.path.name)
    return parse_spec(_table(data, location.table), location.label)


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
    c.unknown(data, _PROJECT_KEYS, None, "")

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
    _check_across(c, services, package)
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
    c.unknown(body, _SERVICE_KEYS, name, "")

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
    c.unknown(body, _RAY_KEYS, name, "ray.")
    before = len(c.issues)
    defaults = RaySpec()

    def bad(key: str, want: str) -> None:
        c.add(f"must be {want}, got {body[key]!r}", service=name, field=f"ray.{key}")

    address = body.get("address")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        bad("address", "a Ray address like '10.0.0.5:6379' or 'auto'")
    namespace = body.get("namespace", defaults.namespace)
    if not isinstance(namespace, str) or not namespace.strip():
        bad("namespace", "a non-empty string")
    for key in ("num_cpus", "num_gpus"):
        value = body.get(key)
        if value is not None and (not _is_number(value) or value < 0):
            bad(key, "a number >= 0")
    resources = body.get("resources", {})
    if not isinstance(resources, Mapping) or not all(
        isinstance(k, str) and k and _is_number(v) and v >= 0 for k, v in resources.items()
    ):
        bad("resources", "a table of resource names to numbers >= 0, like { node_b = 1 }")
        resources = {}
    concurrency = body.get("max_concurrency", defaults.max_concurrency)
    if (
        not isinstance(concurrency, int)
        or isinstance(concurrency, bool)
        or not 1 <= concurrency <= MAX_CONCURRENT_CALLS_LIMIT
    ):
        bad("max_concurrency", f"an integer from 1 to {MAX_CONCURRENT_CALLS_LIMIT}")
    restarts = body.get("max_restarts", defaults.max_restarts)
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < -1:
        bad("max_restarts", "an integer >= -1 (-1: always restart)")
    detached = body.get("detached", defaults.detached)
    if not isinstance(detached, bool):
        bad("detached", "true or false")
    if len(c.issues) != before:
        return None
    num_cpus, num_gpus = body.get("num_cpus"), body.get("num_gpus")
    return RaySpec(
        address=str(address) if address is not None else None,
        namespace=str(namespace),
        num_cpus=float(num_cpus) if num_cpus is not None else None,
        num_gpus=float(num_gpus) if num_gpus is not None else None,
        resources=tuple(sorted((str(k), float(v)) for k, v in resources.items())),
        max_concurrency=int(concurrency),
        max_restarts=int(restarts),
        detached=bool(detached),
    )


def _parse_health(c: _Checker, name: str, body: Any) -> HealthSpec | None:
    if not isinstance(body, Mapping):
        c.add("must be a table", service=name, field="health")
        return None
    c.unknown(body, _HEALTH_KEYS, name, "health.")
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


def _check_across(c: _Checker, services: list[ServiceSpec], package: str) -> None:
    by_port: dict[int, str] = {}
    by_snake: dict[str, str] = {}
    files: dict[str, str] = {}
    names = {s.name for s in services}
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


# -- rpcgen new: edit the spec ------------------------------------------------------------


@dataclass(frozen=True)
class NewService:
    """What ``add_service`` decided: the new spec, and the spec file's new text."""

    spec: ProjectSpec
    service: ServiceSpec
    location: SpecLocation
    text: str
    port_chosen: bool
    created_spec: bool


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def add_service(
    root: Path,
    name: str,
    *,
    port: int | None = None,
    server_module: str | None = None,
    health: HealthSpec | None = None,
    depends_on: Sequence[str] = (),
) -> NewService:
    """Add a service to the spec (creating the spec if needed). Writes nothing.

    Without ``port``, takes the next port above the highest in the spec (base
    50000) that is also free on this machine.
    """
    import tomlkit

    location = find_spec(root)
    created = location is None
    source: SpecText | None = None
    if location is None:
        location = SpecLocation(root / SPEC_FILE, ())
        doc = tomlkit.document()
        doc.add(tomlkit.comment("rpcgen service spec; `rpcgen generate` renders code from it."))
        doc.add("schema_version", SCHEMA_VERSION)
        doc.add("package", "services")
        doc.add("tests_dir", "tests")
        doc.add("host", "127.0.0.1")
    else:
        source = read_spec_text(location.path)
        doc = _parse_doc(source.text, location.path.name)
        table_node: Any = doc
        for key in location.table:
            table_node = table_node[key]
        if table_node == {}:  # an empty [tool.rpcgen] (or rpcgen.toml) asks for a spec
            table_node.add("schema_version", SCHEMA_VERSION)
    label = location.label
    existing = parse_spec(_table(doc.unwrap(), location.table), label)
    if any(s.name == name for s in existing.services):
        raise SpecError([SpecIssue(label, "already exists; pick another name", service=name)])

    chosen = port is None
    if port is None:
        used = {s.port for s in existing.services}
        port = max(used, default=DEFAULT_BASE_PORT - 1) + 1
        while port in used or not _port_free(port):
            port += 1
    health = health or HealthSpec()

    table = tomlkit.table()
    table.add("port", port)
    if server_module is not None:
        table.add("server_module", server_module)
    if depends_on:
        table.add("depends_on", list(depends_on))
    health_table = tomlkit.table()
    health_table.add("enabled", health.enabled)
    health_table.add("interval_s", health.interval_s)
    health_table.add("max_consecutive_failures", health.max_consecutive_failures)
    health_table.add("auto_restart", health.auto_restart)
    table.add("health", health_table)

    container: Any = doc
    for key in location.table:
        container = container[key]
    if "services" not in container:
        services_table = tomlkit.table(is_super_table=True)
        container.add("services", services_table)
    container["services"].add(name, table)

    text = tomlkit.dumps(doc)
    spec = parse_spec(_table(tomlkit.parse(text).unwrap(), location.table), label)
    if source is not None:
        text = source.restore(text)  # the file's own BOM and line endings
    return NewService(spec, spec.service(name), location, text, chosen, created)
