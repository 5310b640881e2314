"""The generator's operations as plain functions: what the CLI calls, and tests too."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .render import render_project
from .spec import HealthSpec, ProjectSpec
from .spec_file import NewService, add_service, load_spec
from .sync import LOCK_FILE, Lock, Plan, apply_plan, atomic_write, clean_stale_temps, make_plan
from .writelock import project_write_lock

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


def plan_generate(
    root: Path, spec: ProjectSpec | None = None, *, tolerate: frozenset[str] = frozenset()
) -> Plan:
    """Render everything in memory and decide per file; writes nothing.

    ``tolerate``: services to hold, with a note, if their server module has an error.
    """
    spec = spec if spec is not None else load_spec(root)
    rendered = render_project(root, spec, tolerate=tolerate)
    return make_plan(
        root,
        rendered,
        Lock.load(root),
        version=_version(),
        services={s.name for s in spec.services},
    )


def _apply(root: Path, plan: Plan, spec_file: str | None = None) -> Plan:
    """Write the plan (holding the project lock), first removing a killed run's temp files."""
    touched = [d.path for d in plan.decisions] + [LOCK_FILE] + ([spec_file] if spec_file else [])
    removed = clean_stale_temps(root, touched)
    if removed:
        note = f"removed {len(removed)} temp file(s) left by an interrupted run"
        plan = dataclasses.replace(plan, notes=(*plan.notes, note))
    apply_plan(root, plan)
    return plan


def generate(
    root: Path, *, dry_run: bool = False, lock_timeout_s: float | None = None
) -> GenerateResult:
    """Re-render every service from the spec and its server class, and apply the result.

    Holds the project's write lock throughout (not for ``dry_run``, which writes
    nothing). Raises :class:`~rpcgen.generator.errors.ConflictsWritten` (exit 3)
    when a merge conflict was written, and
    :class:`~rpcgen.generator.errors.ProjectBusy` (exit 5) when another rpcgen
    kept the lock for longer than ``lock_timeout_s``.
    """
    if dry_run or not root.is_dir():  # no folder: load_spec says there is no spec
        return GenerateResult(plan_generate(root), False)
    with project_write_lock(root, timeout_s=lock_timeout_s):
        plan = _apply(root, plan_generate(root))
    return GenerateResult(plan, True)


def new_service(
    root: Path,
    name: str,
    *,
    port: int | None = None,
    server_module: str | None = None,
    health: HealthSpec | None = None,
    depends_on: Sequence[str] = (),
    dry_run: bool = False,
    lock_timeout_s: float | None = None,
) -> NewResult:
    """Add a service to the spec (creating it if needed), then render the project.

    Everything is validated and rendered before anything is written: on any
    error no file changes. Holds the project's write lock from reading the spec
    to writing the lock file, so concurrent runs never drop each other's service.
    """

    def run() -> NewResult:
        added = add_service(
            root,
            name,
            port=port,
            server_module=server_module,
            health=health,
            depends_on=depends_on,
        )
        # Another service's server module may be mid-edit: hold it, do not fail the new one.
        others = frozenset(s.name for s in added.spec.services if s.name != name)
        plan = plan_generate(root, added.spec, tolerate=others)
        if not dry_run:
            atomic_write(added.location.path, added.text)
            spec_file = added.location.path.relative_to(root).as_posix()
            plan = _apply(root, plan, spec_file)
        return NewResult(added, GenerateResult(plan, not dry_run))

    if dry_run:
        return run()
    root.mkdir(parents=True, exist_ok=True)
    with project_write_lock(root, timeout_s=lock_timeout_s):
        return run()


def list_services(root: Path) -> ProjectSpec:
    return load_spec(root)
