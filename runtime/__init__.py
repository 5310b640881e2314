"""rpcgen.runtime: run a Python object as an RPC service in its own process.

The public API; see :class:`RPCServiceBase`. Importing this package never
imports the generator's dependencies (jinja2, typer, black).
"""

from .aio import AsyncView
from .backend import RayOptions
from .direct import PicklingProxy
from .endpoint import Address, Endpoint
from .errors import (
    BackendNotInstalled,
    CallTimeout,
    NotPicklableError,
    PortInUseError,
    RemoteCallError,
    ServiceAlreadyRunning,
    ServiceAuthenticationError,
    ServiceError,
    ServiceNotFound,
    ServiceStopped,
    ServiceUnavailable,
    StartupError,
    StartupTimeout,
    UnsafeBindError,
)
from .health import HealthPolicy, RestartPolicy
from .notify import LoggingNotifier, NotificationDispatcher, Notifier, SlackWebhookNotifier
from .process import (
    ServerProcess,
    cleanup_stale,
    cleanup_stale_server,
    find_listeners,
    list_servers,
    port_is_free,
    unix_socket_in_use,
    wait_port_free,
)
from .registry import ServiceGraph, ServiceNode, ServiceStartError, StartedServices
from .serve import ReadySignal, ServerTitle, parse_process_title, process_title, serve_rpc
from .service import RPCServiceBase, ServiceState
from .transport import RPCProxy

__all__ = [
    "Address",
    "AsyncView",
    "BackendNotInstalled",
    "CallTimeout",
    "Endpoint",
    "HealthPolicy",
    "LoggingNotifier",
    "NotPicklableError",
    "NotificationDispatcher",
    "Notifier",
    "PicklingProxy",
    "PortInUseError",
    "RPCProxy",
    "RPCServiceBase",
    "RayOptions",
    "ReadySignal",
    "RemoteCallError",
    "RestartPolicy",
    "ServerProcess",
    "ServerTitle",
    "ServiceAlreadyRunning",
    "ServiceAuthenticationError",
    "ServiceError",
    "ServiceGraph",
    "ServiceNode",
    "ServiceNotFound",
    "ServiceStartError",
    "ServiceState",
    "ServiceStopped",
    "ServiceUnavailable",
    "SlackWebhookNotifier",
    "StartedServices",
    "StartupError",
    "StartupTimeout",
    "UnsafeBindError",
    "cleanup_stale",
    "cleanup_stale_server",
    "find_listeners",
    "list_servers",
    "parse_process_title",
    "port_is_free",
    "process_title",
    "serve_rpc",
    "unix_socket_in_use",
    "wait_port_free",
]
