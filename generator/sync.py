"""Regeneration that never loses a user's line: lock file, per-file decisions, 3-way merge.

The lock (``.rpcgen.lock``, deterministic JSON) records every file rpcgen
generated: its owner, its hash and, for rpcgen-owned files, the pristine text
it rendered. That pristine text is the base of a 3-way merge when a user has
edited an owned file, even after an rpcgen upgrade changed the templates.

Per-file decisions (owned = rpcgen's, user = created once, never touched):

=====================================  ===================================================
situation                              action
=====================================  ===================================================
missing, never generated               create
missing, in the lock                   skip: deleted by the user, left deleted
owned, unchanged since generated       update (or unchanged)
owned, edited by hand                  merge (merge3); a conflict is written with diff3
                                       markers and the run exits 3; never a .rej file
owned, still has conflict markers      conflict: left as is until resolved
user-owned, exists                     skip (and say so when its template changed)
service removed from the spec          owned files deleted if unmodified, else kept
file not in the lock                   never touched (adopted if identical)
=====================================  ===================================================

Writes are atomic (temp file + rename) and the lock is written last, so a run
killed part-way leaves each file old or new, and the next run recovers.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConflictsWritten, RpcgenError, ServerModuleError
from .render import Output, Rendered

__all__ = [
    "LOCK_FILE",
    "Action",
    "FileDecision",
    "Lock",
    "LockEntry",
    "Plan",
    "apply_plan",
    "atomic_write",
    "has_conflict_markers",
    "make_plan",
]

LOCK_FILE = ".rpcgen.lock"
LOCK_VERSION = 1
_MARKERS = ("<<<<<<< ", "=======", ">>>>>>> ")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class LockEntry:
    owner: str
    service: str | None
    sha256: str
    #: owned files: the text rpcgen rendered (the merge base); user files: None
    pristine: str | None = None
    #: owned files: Output.render_key of ``pristine``: when the next render has the same
    #: key, ``pristine`` is its formatted text and black need not run again.
    render_key: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"owner": self.owner, "service": self.service, "sha256": self.sha256}
        if self.pristine is not None:
            data["pristine"] = self.pristine
        if self.render_key is not None:
            data["render_key"] = self.render_key
        return data


@dataclass(frozen=True)
class Lock:
    files: dict[str, LockEntry] = field(default_factory=dict)
    rpcgen_version: str = ""
    black_version: str = ""

    @classmethod
    def load(cls, root: Path) -> Lock:
        path = root / LOCK_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise LockError(
                f"{LOCK_FILE}: unreadable ({exc}); restore it from version control"
            ) from exc
        try:
            files = {
                str(p): LockEntry(
                    e["owner"],
                    e.get("service"),
                    e["sha256"],
                    e.get("pristine"),
                    e.get("render_key"),
                )
                for p, e in data["files"].items()
            }
            return cls(files, data.get("rpcgen_version", ""), data.get("black_version", ""))
        except (KeyError, TypeError, AttributeError) as exc:
            raise LockError(
                f"{LOCK_FILE}: malformed ({exc!r}); restore it from version control"
            ) from exc

    def dumps(self) -> str:
        data = {
            "lock_version": LOCK_VERSION,
            "rpcgen_version": self.rpcgen_version,
            "black_version": self.black_version,
            "files": {p: self.files[p].as_json() for p in sorted(self.files)},
        }
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


class LockError(RpcgenError):
    pass


class Action(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    MERGE = "merge"
    CONFLICT = "conflict"
    DELETE = "delete"
    SKIP = "skip"
    KEEP = "keep"
    UNCHANGED = "unchanged"


#: Actions that mean the working tree differs from what the spec renders.
DRIFT = frozenset({Action.CREATE, Action.UPDATE, Action.MERGE, Action.CONFLICT, Action.DELETE})


@dataclass(frozen=True)
class FileDecision:
    path: str
    action: Action
    owner: str
    service: str | None
    reason: str = ""
    old: str | None = None  # on disk now
    new: str | None = None  # to be written (None: nothing written)
    #: the render, for a diff of a file that is not written (formatted only if shown)
    source: Output | None = field(default=None, compare=False, repr=False)

    def line(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.action.value:<9} {self.path}{reason}"

    def diff(self) -> str:
        target = self.new
        if target is None and self.source is not None:
            target = self.source.text
        if self.action is Action.DELETE:
            target = ""
        if target is None or target == (self.old or ""):
            return ""
        return "".join(
            difflib.unified_diff(
                (self.old or "").splitlines(keepends=True),
                target.splitlines(keepends=True),
                fromfile=f"a/{self.path}",
                tofile=f"b/{self.path}",
            )
        )


@dataclass(frozen=True)
class Plan:
    decisions: tuple[FileDecision, ...]
    lock: Lock
    notes: tuple[str, ...] = ()

    @property
    def drift(self) -> bool:
        return any(d.action in DRIFT for d in self.decisions)

    @property
    def conflicts(self) -> list[str]:
        return [d.path for d in self.decisions if d.action is Action.CONFLICT]


def has_conflict_markers(text: str) -> bool:
    lines = text.splitlines()
    return any(line.startswith(_MARKERS[0]) for line in lines) and any(
        line.startswith(_MARKERS[2]) for line in lines
    )


def _merge(base: str, ours: str, theirs: str) -> tuple[str, bool]:
    """3-way merge; (text, conflicted). Markers are diff3 style (with the base)."""
    import merge3

    merger = merge3.Merge3(
        base.splitlines(keepends=True),
        ours.splitlines(keepends=True),
        theirs.splitlines(keepends=True),
    )
    conflicted = any(region[0] == "conflict" for region in merger.merge_regions())
    text = "".join(
        merger.merge_lines(
            name_a="yours (edited by hand)",
            name_b="rpcgen (new render)",
            name_base="rpcgen (previous render)",
            base_marker="|||||||",
        )
    )
    return text, conflicted


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def make_plan(
    root: Path, rendered: Rendered, lock: Lock, *, version: str, services: set[str]
) -> Plan:
    """Decide, for every file rpcgen renders or once rendered, what to do. Reads only."""
    decisions: list[FileDecision] = []
    entries: dict[str, LockEntry] = {}
    produced = {o.path for o in rendered.outputs}
    notes = list(rendered.notes)
    if lock.black_version and lock.black_version != rendered.black_version:
        notes.append(
            f"black {lock.black_version} -> {rendered.black_version}: generated files are "
            "reformatted by the installed version"
        )

    for out in rendered.outputs:
        disk = _read(root, out.path)
        entry = lock.files.get(out.path)
        decision, new_entry = (_decide_owned if out.owner == "rpcgen" else _decide_user)(
            out, disk, entry
        )
        if out.kind == "server" and decision.reason == "deleted by the user; left deleted":
            raise ServerModuleError(
                path=out.path,
                service=out.service or "?",
                reason="the server module was deleted; restore it, or remove the service "
                "from the spec",
            )
        decisions.append(decision)
        if new_entry is not None:
            entries[out.path] = new_entry

    for path in sorted(set(lock.files) - produced):
        entry = lock.files[path]
        disk = _read(root, path)
        gone = entry.service is not None and entry.service not in services
        why = "service removed from the spec" if gone else "no longer generated"
        if entry.owner != "rpcgen":
            if disk is not None:
                decisions.append(
                    FileDecision(
                        path, Action.SKIP, entry.owner, entry.service, f"user-owned; {why}", disk
                    )
                )
            continue
        if disk is None:
            continue
        if entry.pristine is not None and disk == entry.pristine:
            decisions.append(FileDecision(path, Action.DELETE, "rpcgen", entry.service, why, disk))
        else:
            decisions.append(
                FileDecision(
                    path,
                    Action.KEEP,
                    "rpcgen",
                    entry.service,
                    f"{why}, but edited by hand; kept as yours",
                    disk,
                )
            )
    new_lock = Lock(entries, version, rendered.black_version)
    return Plan(tuple(sorted(decisions, key=lambda d: d.path)), new_lock, tuple(notes))


def _decide_owned(
    out: Output, disk: str | None, entry: LockEntry | None
) -> tuple[FileDecision, LockEntry | None]:
    key = out.render_key
    if entry is not None and entry.pristine is not None and entry.render_key == key:
        new = entry.pristine  # black would give exactly this again
    else:
        new = out.text
    record = LockEntry("rpcgen", out.service, _sha(new), new, key)

    def d(action: Action, reason: str = "", text: str | None = None) -> FileDecision:
        return FileDecision(out.path, action, "rpcgen", out.service, reason, disk, text)

    if disk is None:
        if entry is None:
            return d(Action.CREATE, text=new), record
        return d(Action.SKIP, "deleted by the user; left deleted"), record
    if entry is None:
        if disk == new:
            return d(Action.UNCHANGED, "adopted"), record
        return d(Action.SKIP, "exists but was not generated by rpcgen; not touched"), None
    if has_conflict_markers(disk):
        return d(Action.CONFLICT, "unresolved conflict markers from an earlier run"), record
    if disk == new:
        return d(Action.UNCHANGED), record
    if entry.pristine is None:  # a hand-edited lock: no base, so show both sides
        merged, _ = _merge("", disk, new)
        return d(Action.CONFLICT, "no recorded base to merge with", merged), record
    if disk == entry.pristine:
        return d(Action.UPDATE, text=new), record
    if new == entry.pristine:
        return d(Action.UNCHANGED, "your edits kept; nothing new to merge"), record
    merged, conflicted = _merge(entry.pristine, disk, new)
    if conflicted:
        return d(Action.CONFLICT, "your edits and the new render overlap", merged), record
    return d(Action.MERGE, "your edits merged with the new render", merged), record


def _decide_user(
    out: Output, disk: str | None, entry: LockEntry | None
) -> tuple[FileDecision, LockEntry | None]:
    # Keyed on the template's raw output, so an existing user file needs no formatting.
    record = LockEntry("user", out.service, _sha(out.raw))
    if disk is None:
        if entry is None:
            return (
                FileDecision(out.path, Action.CREATE, "user", out.service, "", None, out.text),
                record,
            )
        return (
            FileDecision(
                out.path, Action.SKIP, "user", out.service, "deleted by the user; left deleted"
            ),
            entry,
        )
    reason = "user-owned"
    if entry is not None and entry.sha256 != record.sha256:
        reason = "user-owned; its template changed, see `rpcgen generate --diff`"
    kept = record if entry is not None else None  # a template change is reported once
    return (
        FileDecision(out.path, Action.SKIP, "user", out.service, reason, disk, None, out),
        kept,
    )


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.rpcgen-{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def apply_plan(
    root: Path, plan: Plan, *, write: Callable[[Path, str], None] = atomic_write
) -> None:
    """Carry out a plan: write files, delete removed ones, then the lock (last).

    Raises :class:`ConflictsWritten` (exit 3) after writing if any file has conflicts.
    """
    for decision in plan.decisions:
        if decision.action is Action.DELETE:
            (root / decision.path).unlink(missing_ok=True)
        elif decision.new is not None and decision.action in (
            Action.CREATE,
            Action.UPDATE,
            Action.MERGE,
            Action.CONFLICT,
        ):
            write(root / decision.path, decision.new)
    write(root / LOCK_FILE, plan.lock.dumps())
    if plan.conflicts:
        raise ConflictsWritten(plan.conflicts, plan)
