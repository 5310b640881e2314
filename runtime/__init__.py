"""rpcgen.runtime: run a Python object as an RPC service in its own process.

The public API; see :class:`RPCServiceBase`. Importing this package never
imports the generator's dependencies (jinja2, typer, black), nor ray.

Where to look (one job per module):

* ``service.py``: the client's API and lifecycle; ``lifecycle.py``: its state and locks;
* ``backend.py``: the seam every backend fills; ``backends.py`` picks one; ``direct.py``,
  ``process_backend.py``, ``ray_backend.py`` (with ``ray_cluster.py``, ``ray_actor.py``,
  ``ray_proxy.py``);
* ``proxy.py``, ``mux.py``, ``transport.py``, ``wire.py``: calls, asyncio calls,
  sockets and the client's handshake, framing;
* ``serve.py``, ``gate.py``, ``announce.py``: the server process, its front door
  (accepting and authenticating), its title and readiness;
* ``keeper.py``, ``supervise.py``, ``health.py``, ``poll.py``, ``notify.py``: health checks
  that act, restarts, bounded waits, notifications;
* ``process.py``, ``directory.py``, ``keyfile.py``, ``sharing.py``: ports and processes, the
  service directory, key files, attaching and pickling;
* ``settings.py``, ``constants.py``, ``errors.py``, ``registry.py``, ``testing.py``.
"""

from .aio import AsyncView
from .announce import ReadySignal
from .calls import CallContext, current_call, deadline, idempotent
from .endpoint import Address, Endpoint
from .errors import (
    BackendNotInstalled,
    CallTimeout,
    KeyFileError,
    MessageTooLarge,
    NotPicklableError,
    PortInUseError,
    RemoteCallError,
    ResultNotPicklable,
    ServiceAlreadyRunning,
    ServiceAuthenticationError,
    ServiceError,
    ServiceNotFound,
    ServiceStartError,
    ServiceStopped,
    ServiceTLSError,
    ServiceUnavailable,
    StartupError,
    StartupTimeout,
    StockServerFound,
    UnsafeBindError,
)
from .health import HealthPolicy, RestartPolicy
from .notify import LoggingNotifier, Notifier, SlackWebhookNotifier
from .registry import ServiceGraph, ServiceNode, StartedServices
from .serve import serve_rpc
from .service import RPCServiceBase, ServiceState
from .settings import RayOptions
from .stream_client import RemoteStream

__all__ = [
    "Address",
    "AsyncView",
    "BackendNotInstalled",
    "CallContext",
    "CallTimeout",
    "Endpoint",
    "HealthPolicy",
    "KeyFileError",
    "LoggingNotifier",
    "MessageTooLarge",
    "NotPicklableError",
    "Notifier",
    "PortInUseError",
    "RPCServiceBase",
    "RayOptions",
    "ReadySignal",
    "RemoteCallError",
    "RemoteStream",
    "RestartPolicy",
    "ResultNotPicklable",
    "ServiceAlreadyRunning",
    "ServiceAuthenticationError",
    "ServiceError",
    "ServiceGraph",
    "ServiceNode",
    "ServiceNotFound",
    "ServiceStartError",
    "ServiceState",
    "ServiceStopped",
    "ServiceTLSError",
    "ServiceUnavailable",
    "SlackWebhookNotifier",
    "StartedServices",
    "StartupError",
    "StartupTimeout",
    "StockServerFound",
    "UnsafeBindError",
    "current_call",
    "deadline",
    "idempotent",
    "serve_rpc",
]
