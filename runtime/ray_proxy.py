"""The Ray backend's client proxy: calls to a service's named actor.

:class:`RayProxy` is what ``_server_proxy`` returns for a Ray-backed service, in
its owner and in any other client (attached, unpickled, or inside another
service's actor). It finds the actor by name on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from .backend import CallsByName
from .calls import _DEADLINE
from .errors import CallTimeout, RemoteCallError, ServiceStopped, ServiceUnavailable
from .poll import retry
from .ray_actor import Raised, Refused, is_forwardable
from .ray_cluster import connect, first_line
from .remote import unpack_exception

__all__ = ["RayProxy"]


#: items a Ray stream's actor runs ahead of its consumer (Ray's own backpressure)
_STREAM_WINDOW = 1024
#: times Ray runs an idempotent method's task again after its actor died
_RETRIES = 3


class RayProxy(CallsByName):
    """``_server_proxy`` for a Ray-backed service: ``proxy.method_rpc(*args)`` calls the
    actor and blocks; :meth:`_rpc_acall` awaits it. Finds the actor by name on first
    use, so an unpickled copy in another process (or Ray worker) works too."""

    def __init__(
        self,
        *,
        service: str,
        namespace: str,
        address: str | None,
        handle: Any = None,
        methods: tuple[str, ...] = (),
        streams: tuple[str, ...] = (),
        idempotent: frozenset[str] = frozenset(),
    ) -> None:
        #: server methods the actor class has as its own actor methods
        self._rpc_methods = frozenset(name for name in methods if is_forwardable(name))
        #: streaming methods: called as Ray streaming generators
        self._rpc_streams = frozenset(streams)
        #: methods marked @idempotent: Ray runs them again on a restarted actor
        self._rpc_idempotent = idempotent
        self._rpc_service = service
        self._rpc_namespace = namespace
        self._rpc_cluster = address
        self._rpc_handle = handle
        self._rpc_ray: Any = None
        self._rpc_closed = False

    @property
    def _rpc_where(self) -> str:
        return f"{self._rpc_namespace}/{self._rpc_service}"

    def __repr__(self) -> str:
        return f"<RayProxy service={self._rpc_service!r} actor=ray:{self._rpc_where}>"

    def _rpc_unavailable(self, reason: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            service=self._rpc_service, host="ray", port=self._rpc_where, reason=reason
        )

    def _rpc_actor(self) -> tuple[Any, Any]:
        """(ray, the actor's handle)."""
        if self._rpc_closed:
            raise ServiceStopped(service=self._rpc_service)
        handle, ray = self._rpc_handle, self._rpc_ray
        if handle is not None and ray is not None:
            return ray, handle  # the fast path: a call's only overhead over Ray's own
        ray = self._rpc_ray = connect(self._rpc_service, self._rpc_cluster)
        if handle is None:
            try:
                handle = ray.get_actor(self._rpc_service, namespace=self._rpc_namespace)
            except ValueError:
                raise self._rpc_unavailable(
                    f"no Ray actor {self._rpc_where} runs (is its owner running?)"
                ) from None
            self._rpc_handle = handle
        return ray, handle

    def _rpc_error(
        self, ray: Any, exc: BaseException, method: str, timeout_s: float | None
    ) -> BaseException:
        """The error a caller sees for what Ray raised."""
        errors = ray.exceptions
        if isinstance(exc, (errors.GetTimeoutError, asyncio.TimeoutError)):
            return CallTimeout(
                service=self._rpc_service,
                host="ray",
                port=self._rpc_where,
                method=method,
                timeout_s=timeout_s or 0.0,
            )
        if isinstance(exc, errors.RayActorError):
            if isinstance(exc, errors.ActorDiedError):
                self._rpc_handle = None  # its owner may make a new one of the same name
            if self._rpc_closed:
                return ServiceStopped(service=self._rpc_service)
            return self._rpc_unavailable(first_line(exc))
        if isinstance(exc, errors.RayTaskError):
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                return cause
            return RemoteCallError(
                service=self._rpc_service, method=method, remote_traceback=str(exc)
            )
        return exc

    def _rpc_result(self, method: str, value: Any) -> Any:
        kind = type(value)
        if kind is Raised:
            raise unpack_exception(value.info, service=self._rpc_service, method=method)
        if kind is Refused:
            raise RemoteCallError(
                service=self._rpc_service, method=method, remote_traceback=value.text
            )
        return value

    def _rpc_call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        if timeout_s is None:  # the current deadline()'s rest, if any
            end = _DEADLINE.get()
            timeout_s = None if end is None else max(end - time.monotonic(), 0.001)
        ray, handle = self._rpc_actor()
        if method in self._rpc_streams:
            return self._rpc_items(
                ray, self._rpc_start_stream(handle, method, args, kwargs), method
            )
        try:
            value = ray.get(self._rpc_submit(handle, method, args, kwargs), timeout=timeout_s)
        except Exception as exc:
            raise self._rpc_error(ray, exc, method, timeout_s) from None
        return self._rpc_result(method, value)

    def _rpc_start_stream(
        self, handle: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None
    ) -> Any:
        stream = handle.rpcgen_stream.options(
            num_returns="streaming", _generator_backpressure_num_objects=_STREAM_WINDOW
        )
        return stream.remote((method, args, kwargs or {}))

    def _rpc_items(self, ray: Any, refs: Any, method: str) -> Iterator[Any]:
        """A Ray streaming generator's items; closing it early cancels the actor's task."""
        done = False
        try:
            for ref in refs:
                try:
                    value = ray.get(ref)
                except Exception as exc:
                    raise self._rpc_error(ray, exc, method, None) from None
                yield self._rpc_result(method, value)
            done = True
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    ray.cancel(refs)

    def _rpc_astream(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Any]:
        return self._rpc_aitems(method, args, kwargs)

    async def _rpc_aitems(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None
    ) -> AsyncIterator[Any]:
        ray, handle = self._rpc_actor()
        refs = self._rpc_start_stream(handle, method, args, kwargs)
        done = False
        try:
            async for ref in refs:
                try:
                    value = await ref
                except Exception as exc:
                    raise self._rpc_error(ray, exc, method, None) from None
                yield self._rpc_result(method, value)
            done = True
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    ray.cancel(refs)

    def _rpc_submit(
        self, handle: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None
    ) -> Any:
        if method in self._rpc_methods:
            try:
                bound = getattr(handle, method)
            except AttributeError:  # an actor made by an older client class
                pass
            else:
                if method in self._rpc_idempotent:  # Ray runs it again if the actor dies
                    bound = bound.options(max_task_retries=_RETRIES)
                return bound.remote(*args, **(kwargs or {}))
        call = handle.rpcgen_call
        if method in self._rpc_idempotent:
            call = call.options(max_task_retries=_RETRIES)
        return call.remote((method, args, kwargs or {}))

    def _rpc_acall(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Awaitable[Any]:
        return self._rpc_await(method, args, kwargs or {}, timeout_s)

    async def _rpc_await(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout_s: float | None
    ) -> Any:
        ray, handle = self._rpc_actor()
        try:
            ref = self._rpc_submit(handle, method, args, kwargs)
            if timeout_s is None:
                value = await ref
            else:
                value = await asyncio.wait_for(ref, timeout_s)
        except Exception as exc:
            raise self._rpc_error(ray, exc, method, timeout_s) from None
        return self._rpc_result(method, value)

    def _rpc_health(
        self,
        timeout_s: float,
        restart_wait_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> tuple[int, Any]:
        """(worker pid, ``health_check_rpc()``'s result); raises as a call does.

        While Ray is restarting the actor, asks again for up to ``restart_wait_s``:
        the restarted actor is the one to judge (a restart of our own on top of
        Ray's would only kill the new worker).
        """
        ray, _ = self._rpc_actor()

        def ask(_: float) -> tuple[int, Any]:
            _, handle = self._rpc_actor()
            pid, value = ray.get(handle.rpcgen_health.remote(), timeout=timeout_s)
            return int(pid), value

        try:
            pid, value = retry(
                ask,
                retry_on=ray.exceptions.ActorUnavailableError,
                timeout_s=restart_wait_s,
                clock=clock,
                sleep=sleep,
                initial=0.02,
                maximum=0.2,
            )
        except Exception as exc:
            raise self._rpc_error(ray, exc, "health_check_rpc", timeout_s) from None
        return pid, self._rpc_result("health_check_rpc", value)

    def _rpc_worker_pid(self, timeout_s: float) -> int:
        """The actor's worker pid (it answers, whatever its health)."""
        ray, handle = self._rpc_actor()
        try:
            pid, _ = ray.get(handle.rpcgen_health.remote(), timeout=timeout_s)
        except Exception as exc:
            raise self._rpc_error(ray, exc, "health_check_rpc", timeout_s) from None
        return int(pid)

    def _rpc_cluster_address(self) -> str | None:
        """The cluster's GCS address, so that a copy unpickled elsewhere joins the same Ray."""
        ray = connect(self._rpc_service, self._rpc_cluster)
        try:
            return str(ray.get_runtime_context().gcs_address)
        except Exception:
            return self._rpc_cluster

    def _rpc_close(self) -> None:
        self._rpc_closed = True
        self._rpc_handle = None
