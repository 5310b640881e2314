"""The spec file: where it is, reading it, and how ``rpcgen new`` edits it.

The spec lives in ``rpcgen.toml`` at the project root, or in ``[tool.rpcgen]`` of
``pyproject.toml`` when that table exists. Edits go through tomlkit, so comments,
order, a BOM and CRLF line endings survive.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SpecError, SpecIssue
from .spec import (
    DEFAULT_BASE_PORT,
    PYPROJECT,
    SCHEMA_VERSION,
    SPEC_FILE,
    HealthSpec,
    ProjectSpec,
    ServiceSpec,
    SpecLocation,
)
from .spec_check import parse_spec

__all__ = ["NewService", "SpecText", "add_service", "find_spec", "load_spec", "read_spec_text"]


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
