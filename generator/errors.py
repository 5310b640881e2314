"""Errors raised by :mod:`rpcgen.generator`; the CLI maps each to an exit code.

::

    RpcgenError
    ├── SpecError (ValueError)             bad or malformed spec            exit 2
    ├── ServerModuleError (ValueError)     server module unreadable/unparsable exit 2
    └── ConflictsWritten                   merge conflicts were written     exit 3

Every message is one line per problem, naming the file (and the service and the
field where there is one) and saying what to do next. Every error survives pickling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rpcgen.runtime.errors import reduce_by_state

__all__ = ["ConflictsWritten", "RpcgenError", "ServerModuleError", "SpecError", "SpecIssue"]


class RpcgenError(Exception):
    """Root of every error raised by rpcgen.generator."""

    exit_code = 2

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__reduce__ = reduce_by_state  # type: ignore[assignment,method-assign]

    __reduce__ = reduce_by_state

    def lines(self) -> list[str]:
        return [str(self)]


class SpecIssue:
    """One problem in a spec: where it is and what is wrong."""

    __slots__ = ("field", "file", "message", "service")

    def __init__(
        self, file: str, message: str, *, service: str | None = None, field: str | None = None
    ) -> None:
        self.file, self.message, self.service, self.field = file, message, service, field

    def __str__(self) -> str:
        where = [self.file]
        if self.service:
            where.append(f"service {self.service}")
        if self.field:
            where.append(self.field)
        return f"{': '.join(where)}: {self.message}"

    def __repr__(self) -> str:
        return f"SpecIssue({str(self)!r})"


class SpecError(ValueError, RpcgenError):
    """The spec is malformed or invalid; nothing was written."""

    def __init__(self, issues: Sequence[SpecIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))

    def lines(self) -> list[str]:
        return [str(i) for i in self.issues]


class ServerModuleError(ValueError, RpcgenError):
    """The server module could not be read or parsed; nothing was written."""

    def __init__(self, *, path: str, service: str, reason: str) -> None:
        self.path, self.service, self.reason = path, service, reason
        super().__init__(f"{path}: service {service}: {reason}")


class ConflictsWritten(RpcgenError):
    """Merge conflicts were written with diff3 markers; resolve them, then generate again."""

    exit_code = 3

    def __init__(self, paths: Sequence[str], plan: object = None) -> None:
        self.paths = list(paths)
        #: The plan that was applied, so a caller can still report every file.
        self.plan = plan
        super().__init__(
            f"merge conflicts written to {', '.join(self.paths)}: resolve the <<<<<<< markers, "
            "then run `rpcgen generate` again"
        )
