"""Where a service's server object runs: its own process, or a Ray actor.

``backend="process"`` (the default) runs the server in a process of its own on
this host. ``backend="ray"`` creates it inside a named Ray actor (see
:mod:`rpcgen.runtime.ray_backend`, imported only then, so ``import
rpcgen.runtime`` never imports ray). This module holds what needs no Ray: the
names, :class:`RayOptions`, and the check that a client's settings fit its backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BACKENDS",
    "DEFAULT_RAY_MAX_CONCURRENCY",
    "DEFAULT_RAY_NAMESPACE",
    "RayOptions",
    "check_backend",
]

BACKENDS = ("process", "ray")
DEFAULT_RAY_NAMESPACE = "rpcgen"
#: As the process backend's ``max_concurrent_calls``: calls overlap (a health check is
#: never queued behind a long call). 1 gives Ray's one-call-at-a-time actor.
DEFAULT_RAY_MAX_CONCURRENCY = 32


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RayOptions:
    """How the service's actor is placed and kept alive (passed to ``actor.options()``).

    ``max_restarts``: Ray restarts a dead actor this many times (-1: always).
    ``detached``: the actor outlives the program that created it, until its
    owner's ``shutdown()``; a later owner replaces it only once that program is gone.
    """

    namespace: str = DEFAULT_RAY_NAMESPACE
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    max_concurrency: int = DEFAULT_RAY_MAX_CONCURRENCY
    max_restarts: int = -1
    detached: bool = False

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"RayOptions: {problems[0]}")
        object.__setattr__(self, "resources", dict(self.resources))

    def problems(self) -> list[str]:
        """What is wrong with these options, one line each (empty: nothing)."""
        found = []
        if not isinstance(self.namespace, str) or not self.namespace.strip():
            found.append(f"namespace must be a non-empty string, got {self.namespace!r}")
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None and (not _number(value) or value < 0):
                found.append(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.resources, Mapping) or not all(
            isinstance(k, str) and k and _number(v) and v >= 0 for k, v in self.resources.items()
        ):
            found.append(f"resources must map names to numbers >= 0, got {self.resources!r}")
        if (
            not isinstance(self.max_concurrency, int)
            or isinstance(self.max_concurrency, bool)
            or not 1 <= self.max_concurrency <= 1024
        ):
            found.append(
                f"max_concurrency must be an integer from 1 to 1024, got {self.max_concurrency!r}"
            )
        if (
            not isinstance(self.max_restarts, int)
            or isinstance(self.max_restarts, bool)
            or self.max_restarts < -1
        ):
            found.append(f"max_restarts must be an integer >= -1, got {self.max_restarts!r}")
        if not isinstance(self.detached, bool):
            found.append(f"detached must be true or false, got {self.detached!r}")
        return found

    def actor_options(self) -> dict[str, Any]:
        """The keywords for ``ActorClass.options()`` (without name and runtime_env)."""
        options: dict[str, Any] = {
            "namespace": self.namespace,
            "max_restarts": self.max_restarts,
            # A call in flight when the actor dies fails: it may have run, and
            # running it twice is not ours to decide (as with the process backend).
            "max_task_retries": 0,
            "max_concurrency": self.max_concurrency,
        }
        if self.num_cpus is not None:
            options["num_cpus"] = self.num_cpus
        if self.num_gpus is not None:
            options["num_gpus"] = self.num_gpus
        if self.resources:
            options["resources"] = dict(self.resources)
        if self.detached:
            options["lifetime"] = "detached"
        return options


def check_backend(
    service: str,
    backend: str,
    *,
    ray_address: str | None,
    ray_options: RayOptions | None,
    process_only: Mapping[str, bool],
) -> None:
    """Raise ValueError (one line) if a setting does not belong to the backend.

    ``process_only`` maps each process-backend setting to whether it was changed
    from its default.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"service {service!r}: backend must be one of {', '.join(map(repr, BACKENDS))}, "
            f"got {backend!r}"
        )
    if backend == "process":
        given = [
            name
            for name, value in (("ray_address", ray_address), ("ray_options", ray_options))
            if value is not None
        ]
        if given:
            raise ValueError(
                f"service {service!r}: {' and '.join(given)} apply only to backend='ray' "
                "(this service uses backend='process')"
            )
        return
    changed = sorted(name for name, was_set in process_only.items() if was_set)
    if changed:
        raise ValueError(
            f"service {service!r}: {', '.join(changed)} apply only to backend='process' "
            "(this service uses backend='ray'; use RayOptions for the actor)"
        )
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address):
        raise ValueError(f"service {service!r}: ray_address must be a non-empty string")
