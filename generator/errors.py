"""Errors raised by :mod:`rpcgen.generator`; the CLI maps each to an exit code.

::

    RpcgenError
    ├── SpecError (ValueError)             bad or malformed spec            exit 2
    ├── ServerModuleError (ValueError)     server module unreadable/unparsable exit 2
    ├── LockError (ValueError)             .rpcgen.lock unreadable, or a path exit 2
    │                                      in it leaves the project
    ├── PathOutsideProject (ValueError)    a file to write resolves outside  exit 2
    │                                      the project (through a symlink)
    ├── ConflictsWritten                   merge conflicts were written     exit 3
    └── ProjectBusy (BlockingIOError)      another rpcgen is writing here   exit 5

Every message is one line per problem, naming the file (and the service and the
field where there is one) and saying what to do next. Every error survives pickling.
"""

from __future__ import annotations

from collections.abc import Sequence

from rpcgen.runtime.errors import PicklesByState

__all__ = [
    "ConflictsWritten",
    "LockError",
    "PathOutsideProject",
    "ProjectBusy",
    "RpcgenError",
    "ServerModuleError",
    "SpecError",
    "SpecIssue",
]


class RpcgenError(PicklesByState):
    """Root of every error raised by rpcgen.generator."""

    exit_code = 2

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


class LockError(ValueError, RpcgenError):
    """The lock file is unreadable or malformed, or names a path outside the project."""

    def __init__(self, *, file: str, reason: str) -> None:
        self.file, self.reason = file, reason
        super().__init__(f"{file}: {reason}; restore it from version control")


class PathOutsideProject(ValueError, RpcgenError):
    """A file rpcgen would write or delete resolves outside the project folder."""

    def __init__(self, *, path: str, resolved: str) -> None:
        self.path, self.resolved = path, resolved
        super().__init__(
            f"{path}: resolves to {resolved}, outside the project (through a symlink); "
            "rpcgen writes only inside the project: replace the link with a folder"
        )


class ProjectBusy(BlockingIOError, RpcgenError):
    """Another rpcgen process holds the project's write lock."""

    exit_code = 5

    def __init__(self, *, root: str, waited_s: float) -> None:
        self.root, self.waited_s = root, waited_s
        super().__init__(
            f"another rpcgen is writing the project in {root} (waited {waited_s:g}s); "
            "run this command again when it has finished"
        )

    def __str__(self) -> str:
        return str(self.args[0])
