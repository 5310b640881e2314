"""rpcgen.generator: the code generator and its CLI.

The API the CLI is a thin layer over (as copier's ``run_copy`` is)::

    from rpcgen.generator import generate, new_service

    new_service(Path("."), "PriceFetcher", port=50001)  # add to the spec, render the code
    generate(Path("."))                                 # regenerate after a spec change

Where to look: ``spec.py`` (the model), ``spec_check.py`` (validation),
``spec_file.py`` (finding, reading and editing the spec), ``introspect.py`` and ``annotations.py``
(reading the user's server class), ``render.py`` (templates, black),
``sync.py`` (the lock, 3-way merges, writing), ``api.py``, ``cli.py``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import (
        GenerateResult,
        NewResult,
        generate,
        list_services,
        new_service,
        plan_generate,
    )
    from .errors import (
        ConflictsWritten,
        LockError,
        PathOutsideProject,
        ProjectBusy,
        RpcgenError,
        ServerModuleError,
        SpecError,
    )
    from .spec import HealthSpec, ProjectSpec, RaySpec, ServiceSpec

# Where each public name lives. Imported on first use (PEP 562), so that the CLI's own
# import of this package (`rpcgen --help`) does not pay for jinja2, black and the runtime.
_HOME = {
    **dict.fromkeys(
        (
            "GenerateResult",
            "NewResult",
            "generate",
            "list_services",
            "new_service",
            "plan_generate",
        ),
        ".api",
    ),
    **dict.fromkeys(
        (
            "ConflictsWritten",
            "LockError",
            "PathOutsideProject",
            "ProjectBusy",
            "RpcgenError",
            "ServerModuleError",
            "SpecError",
        ),
        ".errors",
    ),
    **dict.fromkeys(("HealthSpec", "ProjectSpec", "RaySpec", "ServiceSpec"), ".spec"),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ConflictsWritten",
    "GenerateResult",
    "HealthSpec",
    "LockError",
    "NewResult",
    "PathOutsideProject",
    "ProjectBusy",
    "ProjectSpec",
    "RaySpec",
    "RpcgenError",
    "ServerModuleError",
    "ServiceSpec",
    "SpecError",
    "generate",
    "list_services",
    "new_service",
    "plan_generate",
]
