"""Values shared by the runtime and the generator, defined once.

The generator validates a spec against these and renders them into generated
code; the runtime applies them. Importing this module imports nothing else.
"""

from __future__ import annotations

__all__ = [
    "BACKENDS",
    "DEFAULT_HANDSHAKE_TIMEOUT_S",
    "DEFAULT_MAX_CONCURRENT_CALLS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_RAY_NAMESPACE",
    "DEFAULT_SHARED_MEMORY_BYTES",
    "MAX_CONCURRENT_CALLS_LIMIT",
]

#: Where a service's server object can run: its own process, or a named Ray actor.
BACKENDS = ("process", "ray")
#: Calls one connection may run at once (the process backend's ``max_concurrent_calls``
#: and the Ray actor's ``max_concurrency``): a health check is never queued behind a
#: long call.
DEFAULT_MAX_CONCURRENT_CALLS = 32
#: The most calls at once a spec or ``RayOptions`` may ask for.
MAX_CONCURRENT_CALLS_LIMIT = 1024
#: Seconds a new connection has to authenticate and send its first request.
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
#: The largest request or reply a connection takes (a peer that declares more is
#: dropped): large arrays travel, and no peer can make either side allocate more.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30
#: The Ray namespace of a service's actor unless its options name another.
DEFAULT_RAY_NAMESPACE = "rpcgen"
#: Shared memory a connection on this host may use each way for large buffers (see
#: .shm): sparse, so memory is used only where a message was written; 0 turns it off.
DEFAULT_SHARED_MEMORY_BYTES = 1 << 30
