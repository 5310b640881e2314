"""No processes: every error pickles, "big" values, process titles (issue 9)."""

from __future__ import annotations

import array
import dataclasses
import inspect
import pickle
from typing import Any

import pytest

import rpcgen.generator.errors as generator_errors
import rpcgen.runtime.errors as runtime_errors
from rpcgen.generator.errors import ConflictsWritten, ServerModuleError, SpecError, SpecIssue
from rpcgen.runtime.announce import parse_process_title, process_title
from rpcgen.runtime.wire import looks_big

#: One instance of every error class, built the way the code builds it.
SAMPLES: dict[str, Any] = {
    "ServiceError": runtime_errors.ServiceError("plain"),
    "ServiceUnavailable": runtime_errors.ServiceUnavailable(
        service="S", host="127.0.0.1", port=1, reason="refused"
    ),
    "CallTimeout": runtime_errors.CallTimeout(
        service="S", host="127.0.0.1", port=1, method="m", timeout_s=0.5
    ),
    "ServiceAuthenticationError": runtime_errors.ServiceAuthenticationError(
        service="S", host="127.0.0.1", port=1
    ),
    "ResultNotPicklable": runtime_errors.ResultNotPicklable(
        service="S", method="m", reason="TypeError: cannot pickle 'generator' object"
    ),
    "StockServerFound": runtime_errors.StockServerFound(service="S", host="127.0.0.1", port=1),
    "ServiceTLSError": runtime_errors.ServiceTLSError(
        service="S", host="10.0.0.1", port=1, reason="certificate verify failed"
    ),
    "RemoteCallError": runtime_errors.RemoteCallError(
        service="S",
        method="m",
        remote_traceback="Traceback...",
        error_type="x.E",
        error_message="e",
    ),
    "RemoteTraceback": runtime_errors.RemoteTraceback(remote_traceback="Traceback..."),
    "StartupError": runtime_errors.StartupError(service="S", port=1, exitcode=3, detail="boom"),
    "StartupTimeout": runtime_errors.StartupTimeout(service="S", port=1, timeout_s=2.0),
    "PortInUseError": runtime_errors.PortInUseError(
        service="S", host="127.0.0.1", port=1, pid=7, process_name="nginx"
    ),
    "ServiceStopped": runtime_errors.ServiceStopped(service="S"),
    "ServiceNotFound": runtime_errors.ServiceNotFound(
        service="S", port=None, timeout_s=1.0, found=[(1, 7), (2, 8)]
    ),
    "UnsafeBindError": runtime_errors.UnsafeBindError(service="S", host="0.0.0.0"),
    "NotPicklableError": runtime_errors.NotPicklableError(service="S"),
    "ServiceAlreadyRunning": runtime_errors.ServiceAlreadyRunning(
        service="S", where="Ray actor rpcgen/S", owner="pid 7 on 10.0.0.1 (Ray job 01000000)"
    ),
    "BackendNotInstalled": runtime_errors.BackendNotInstalled(
        service="S", backend="ray", extra="ray"
    ),
    "ServiceStartError": runtime_errors.ServiceStartError(
        service="S", cause=ValueError("bad config"), stopped=["A", "B"]
    ),
    "MessageTooLarge": runtime_errors.MessageTooLarge(
        service="S", what="reply", size=2**31, limit=2**30
    ),
    "KeyFileError": runtime_errors.KeyFileError(
        path="/keys/svc.key", problem="it is readable by others (mode 644)", fix="chmod 600"
    ),
    "RpcgenError": generator_errors.RpcgenError("plain"),
    "SpecError": SpecError([SpecIssue("rpcgen.toml", "bad", service="S", field="port")]),
    "SpecIssue": None,  # not an exception
    "ServerModuleError": ServerModuleError(path="s.py", service="S", reason="syntax error"),
    "ConflictsWritten": ConflictsWritten(["a.py", "b.py"]),
    "LockError": generator_errors.LockError(file=".rpcgen.lock", reason="malformed"),
    "PathOutsideProject": generator_errors.PathOutsideProject(path="tests", resolved="/elsewhere"),
    "ProjectBusy": generator_errors.ProjectBusy(root="/p", waited_s=10.0),
}


def _error_classes() -> list[type[BaseException]]:
    found = []
    for module in (runtime_errors, generator_errors):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                found.append(obj)
    return found


def test_the_samples_cover_every_error_class() -> None:
    missing = {cls.__name__ for cls in _error_classes()} - set(SAMPLES)
    assert not missing, f"add a sample for {missing}"


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_survives_pickle(cls: type[BaseException]) -> None:
    error = SAMPLES[cls.__name__]
    assert type(error) is cls
    if hasattr(error, "add_note") and not getattr(error, "__notes__", None):
        error.add_note("a note")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert vars(copy) == vars(error) or _same_attrs(copy, error)
    if isinstance(error, SpecError):
        assert copy.lines() == error.lines()


def _same_attrs(a: Any, b: Any) -> bool:
    # SpecIssue has no __eq__: compare what it says.
    return {k: str(v) for k, v in vars(a).items()} == {k: str(v) for k, v in vars(b).items()}


@dataclasses.dataclass
class _Record:
    nbytes: int | None = None


class _AnyAttribute:
    def __getattr__(self, name: str) -> Any:
        return object()


def test_looks_big_counts_real_buffers_only() -> None:
    big = 1 << 17
    assert looks_big([b"x" * big]) and looks_big(["x" * big]) and looks_big([bytearray(big)])
    assert looks_big([memoryview(b"x" * big)]) and looks_big([array.array("d", [0.0]) * big])
    assert not looks_big([b"x", 1, 2.5, None, True, {"a": 1}, [1, 2]])
    assert not looks_big([_Record(), _Record(nbytes=10**9), _AnyAttribute()])


@pytest.mark.parametrize(
    "title",
    [
        "rpcgen:X port=50001 owner=999999999999999999999",
        "rpcgen:X port=99999999999999 owner=12",
        "rpcgen:X port=0 owner=12",
        "rpcgen:X port=70000 owner=12",
        "rpcgen:X port=50001 owner=4194305",
    ],
)
def test_implausible_titles_are_not_servers(title: str) -> None:
    assert parse_process_title(title) is None


def test_real_titles_still_parse() -> None:
    title = parse_process_title(process_title("PriceFetcher", 50001, 4242))
    assert title is not None and (title.service, title.port, title.owner_pid) == (
        "PriceFetcher",
        50001,
        4242,
    )
