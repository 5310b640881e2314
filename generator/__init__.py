"""rpcgen.generator: the code generator and its CLI.

The API the CLI is a thin layer over (as copier's ``run_copy`` is)::

    from rpcgen.generator import generate, new_service

    new_service(Path("."), "PriceFetcher", port=50001)  # add to the spec, render the code
    generate(Path("."))                                 # regenerate after a spec change

Where to look: ``spec.py`` (the model), ``spec_check.py`` (validation),
``spec_file.py`` (finding, reading and editing the spec), ``introspect.py``
(reading the user's server class), ``render.py`` (templates, black),
``sync.py`` (the lock, 3-way merges, writing), ``api.py``, ``cli.py``.
"""

from .api import GenerateResult, NewResult, generate, list_services, new_service, plan_generate
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
