"""The generator's operations as plain functions: what the CLI calls, and tests too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .render import render_project
from .spec import HealthSpec, NewService, ProjectSpec, add_service, load_spec
from .sync import Lock, Plan, apply_plan, atomic_write, make_plan

__all__ = [
    "GenerateResult",
    "NewResult",
    "generate",
    "list_services",
    "new_service",
    "plan_generate",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rpcgen")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class GenerateResult:
    plan: Plan
    written: bool


@dataclass(frozen=True)
class NewResult:
    added: NewService
    result: GenerateResult


def plan_generate(root: Path, spec: ProjectSpec | None = None) -> Plan:
    """Render everything in memory and decide per file; writes nothing."""
    spec = spec if spec is not None else load_spec(root)
    rendered = render_project(root, spec)
    return make_plan(
        root,
        rendered,
        Lock.load(root),
        version=_version(),
        services={s.name for s in spec.services},
    )


def generate(root: Path, *, dry_run: bool = False) -> GenerateResult:
    """Re-render every service from the spec and its server class, and apply the result.

    Raises :class:`~rpcgen.generator.errors.ConflictsWritten` (exit 3) when a
    merge conflict was written.
    """
    plan = plan_generate(root)
    if not dry_run:
        apply_plan(root, plan)
    return GenerateResult(plan, not dry_run)


def new_service(
    root: Path,
    name: str,
    *,
    port: int | None = None,
    server_module: str | None = None,
    health: HealthSpec | None = None,
    depends_on: Sequence[str] = (),
    dry_run: bool = False,
) -> NewResult:
    """Add a service to the spec (creating it if needed), then render the project.

    Everything is validated and rendered before anything is written: on any
    error no file changes.
    """
    added = add_service(
        root, name, port=port, server_module=server_module, health=health, depends_on=depends_on
    )
    plan = plan_generate(root, added.spec)
    if not dry_run:
        atomic_write(added.location.path, added.text)
        apply_plan(root, plan)
    return NewResult(added, GenerateResult(plan, not dry_run))


def list_services(root: Path) -> ProjectSpec:
    return load_spec(root)
