"""A client's settings, checked: which backend, and what each backend is given.

``backend="process"`` (the default) runs the server in a process of its own on
this host (:class:`ProcessSettings`). ``backend="ray"`` creates it inside a
named Ray actor (:class:`RayOptions`; :mod:`rpcgen.runtime.ray_backend` is
imported only then, so ``import rpcgen.runtime`` never imports ray).
:func:`check_backend` refuses a setting that does not fit the backend, and the
generator validates a spec's Ray table with :func:`ray_option_problems` too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .constants import (
    BACKENDS,
    DEFAULT_HANDSHAKE_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RAY_NAMESPACE,
    DEFAULT_SHARED_MEMORY_BYTES,
    MAX_CONCURRENT_CALLS_LIMIT,
)
from .endpoint import Endpoint, is_loopback
from .errors import UnsafeBindError
from .tls import TlsPolicy
from .transport import unix_socket_path

__all__ = [
    "RayOptions",
    "ServiceSettings",
    "check_backend",
    "check_call_options",
    "is_loopback",
    "ray_option_problems",
]


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
    #: calls overlap (a health check is never queued behind a long call); 1 gives
    #: Ray's one-call-at-a-time actor
    max_concurrency: int = DEFAULT_MAX_CONCURRENT_CALLS
    max_restarts: int = -1
    detached: bool = False

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"RayOptions: {problems[0]}")
        object.__setattr__(self, "resources", dict(self.resources))

    def problems(self) -> list[str]:
        """What is wrong with these options, one line each (empty: nothing)."""
        return [f"{name} {text}" for name, text in ray_option_problems(vars(self))]

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


def ray_option_problems(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, what is wrong) for each bad Ray option in ``fields``; absent ones are fine.

    One definition for both halves: :class:`RayOptions` and the spec's ``ray`` table.
    """
    found: list[tuple[str, str]] = []
    namespace = fields.get("namespace", DEFAULT_RAY_NAMESPACE)
    if not isinstance(namespace, str) or not namespace.strip():
        found.append(("namespace", f"must be a non-empty string, got {namespace!r}"))
    for name in ("num_cpus", "num_gpus"):
        value = fields.get(name)
        if value is not None and (not _number(value) or value < 0):
            found.append((name, f"must be a number >= 0, got {value!r}"))
    resources = fields.get("resources", {})
    if not isinstance(resources, Mapping) or not all(
        isinstance(k, str) and k and _number(v) and v >= 0 for k, v in resources.items()
    ):
        found.append(
            (
                "resources",
                "must be a table of resource names to numbers >= 0, like { node_b = 1 }, "
                f"got {resources!r}",
            )
        )
    concurrency = fields.get("max_concurrency", DEFAULT_MAX_CONCURRENT_CALLS)
    if not _integer(concurrency) or not 1 <= concurrency <= MAX_CONCURRENT_CALLS_LIMIT:
        found.append(
            (
                "max_concurrency",
                f"must be an integer from 1 to {MAX_CONCURRENT_CALLS_LIMIT}, got {concurrency!r}",
            )
        )
    restarts = fields.get("max_restarts", -1)
    if not _integer(restarts) or restarts < -1:
        found.append(
            ("max_restarts", f"must be an integer >= -1 (-1: always restart), got {restarts!r}")
        )
    detached = fields.get("detached", False)
    if not isinstance(detached, bool):
        found.append(("detached", f"must be true or false, got {detached!r}"))
    return found


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_client_settings(
    service: str,
    port: int,
    *,
    host: str,
    transport: str,
    socket_dir: str | os.PathLike[str] | None,
    authkey_file: str | os.PathLike[str] | None,
    handshake_timeout_s: float,
    max_concurrent_calls: int,
    max_message_bytes: int,
    backend: str,
    ray_address: str | None,
    ray_options: RayOptions | None,
    tls: TlsPolicy | None = None,
) -> None:
    """Raise (one line) if a client's settings are wrong, or do not fit its backend."""
    if not service or not service.replace("_", "a").replace(".", "a").isalnum():
        raise ValueError(f"service_name must be an identifier, got {service!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535 for service {service!r}, got {port}")
    if (
        not isinstance(max_message_bytes, int)
        or isinstance(max_message_bytes, bool)
        or max_message_bytes < 1024
    ):
        raise ValueError(
            f"max_message_bytes must be an integer of at least 1024, got {max_message_bytes!r}"
        )
    if transport not in ("tcp", "unix"):
        raise ValueError(f"transport must be 'tcp' or 'unix', got {transport!r}")
    if transport == "tcp" and not is_loopback(host) and authkey_file is None:
        raise UnsafeBindError(service=service, host=host)
    policy = tls or TlsPolicy()
    if transport == "unix" and (policy.mode == "on" or policy.ssl_context is not None):
        raise ValueError(
            f"service {service!r}: TLS applies to TCP only (a Unix socket never leaves "
            "this host); drop tls='on' / ssl_context, or use transport='tcp'"
        )
    check_backend(
        service,
        backend,
        ray_address=ray_address,
        ray_options=ray_options,
        process_only={
            "transport": transport != "tcp",
            "socket_dir": socket_dir is not None,
            "authkey_file": authkey_file is not None,
            "handshake_timeout_s": handshake_timeout_s != DEFAULT_HANDSHAKE_TIMEOUT_S,
            "max_concurrent_calls": max_concurrent_calls != DEFAULT_MAX_CONCURRENT_CALLS,
            "max_message_bytes": max_message_bytes != DEFAULT_MAX_MESSAGE_BYTES,
            "tls": policy != TlsPolicy(),
        },
    )


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


@dataclass(frozen=True)
class ServiceSettings:
    """A client's settings, as its backend is given them (checked by the client first)."""

    service: str
    port: int
    host: str = "127.0.0.1"
    transport: str = "tcp"
    socket_dir: str | None = None
    authkey_file: str | None = None
    start_method: str | None = None
    start_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    shutdown_timeout_s: float = 2.0
    check_timeout_s: float = 5.0
    #: the largest request or reply this client sends or takes
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: "direct" (running_unit_tests), or a name from BACKENDS
    backend: str = "process"
    #: direct mode: every argument, result and error through pickle, as over RPC
    direct_pickle: bool = False
    ray_address: str | None = None
    ray_options: RayOptions | None = None
    #: the server's methods (generated clients list them): one actor method each on Ray
    server_methods: tuple[str, ...] = ()
    #: its streaming methods: Ray calls them as streaming generators
    stream_methods: tuple[str, ...] = ()
    #: when connections use TLS, and with which context
    tls: TlsPolicy = field(default_factory=TlsPolicy)
    #: a call's timeout where it gives none (None: it waits for ever)
    call_timeout_s: float | None = None
    #: server methods that are safe to run twice: tried again across a restart
    idempotent: frozenset[str] = frozenset()
    #: (items, bytes) a stream may run ahead of its consumer (None: the server's default)
    stream_window: tuple[int, int] | None = None
    #: shared memory each way per connection for large buffers on this host (0: none)
    shared_memory_bytes: int = DEFAULT_SHARED_MEMORY_BYTES

    @property
    def endpoint(self) -> Endpoint:
        """Where the server listens: (host, port), or its Unix socket."""
        if self.transport == "unix":
            return Endpoint(unix_socket_path(self.service, self.port, self.socket_dir))
        return Endpoint((self.host, self.port))

    @property
    def on_this_host(self) -> bool:
        """Whether the server is on this host (so the service directory describes it)."""
        return self.transport == "unix" or is_loopback(self.host)


def check_call_options(
    call_timeout_s: float | None,
    stream_window: tuple[int, int] | None,
    shared_memory_bytes: int = 0,
) -> None:
    if type(shared_memory_bytes) is not int or shared_memory_bytes < 0:
        raise ValueError(
            f"shared_memory_bytes must be an int, 0 or more, got {shared_memory_bytes!r}"
        )
    if call_timeout_s is not None and not (0 < call_timeout_s < float("inf")):
        raise ValueError(f"call_timeout_s must be a positive number, got {call_timeout_s!r}")
    if stream_window is not None and (
        len(stream_window) != 2 or not all(isinstance(n, int) and n > 0 for n in stream_window)
    ):
        raise ValueError(
            f"stream_window must be (items, bytes), two positive ints, got {stream_window!r}"
        )
