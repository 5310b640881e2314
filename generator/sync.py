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
owned, missing (service in the spec)   create again: rpcgen's files are rpcgen's
user-owned, missing, in the lock       skip: deleted by the user, left deleted
owned, unchanged since generated       update (or unchanged)
owned, edited by hand                  merge (merge3); a conflict is written with diff3
                                       markers and the run exits 3; never a .rej file
owned, still has conflict markers      conflict: left as is until resolved
user-owned, exists                     skip (and say so when its template changed)
service removed from the spec          owned files deleted if unmodified, else kept
file not in the lock                   never touched (adopted if identical)
=====================================  ===================================================

Writes are atomic (temp file + rename) and the lock is written last, so a run
killed part-way leaves each file old or new, and the next run recovers (and
removes the temp files such a run left). A file's line endings are kept: a CRLF
file is compared and merged as LF and written back as CRLF. The merge base of a
file moves on only when the file is written.

Every path, from the lock or from the spec, is checked to be relative and to
stay inside the project, symlinks resolved, before anything is written or deleted.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ConflictsWritten, LockError, PathOutsideProject, ServerModuleError
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
    "check_inside",
    "clean_stale_temps",
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
        """Read and check the lock: every path in it must stay inside ``root``."""
        path = root / LOCK_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise LockError(file=LOCK_FILE, reason=f"unreadable ({exc})") from exc
        try:
            files = {
                _lock_path(root, p): LockEntry(
                    _text(e["owner"]),
                    _optional_text(e.get("service")),
                    _text(e["sha256"]),
                    _optional_text(e.get("pristine")),
                    _optional_text(e.get("render_key")),
                )
                for p, e in data["files"].items()
            }
            return cls(
                files,
                _text(data.get("rpcgen_version", "")),
                _text(data.get("black_version", "")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise LockError(file=LOCK_FILE, reason=f"malformed ({exc!r})") from exc

    def dumps(self) -> str:
        data = {
            "lock_version": LOCK_VERSION,
            "rpcgen_version": self.rpcgen_version,
            "black_version": self.black_version,
            "files": {p: self.files[p].as_json() for p in sorted(self.files)},
        }
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _lock_path(root: Path, rel: Any) -> str:
    """``rel`` if it is a normalised relative path that stays inside ``root``."""
    if not isinstance(rel, str) or not _is_normal_relative(rel):
        raise LockError(
            file=LOCK_FILE,
            reason=f"path {rel!r} is not a relative path inside the project, so nothing was "
            "written or deleted",
        )
    try:
        check_inside(root, rel)
    except PathOutsideProject as exc:
        raise LockError(
            file=LOCK_FILE,
            reason=f"path {rel!r} resolves to {exc.resolved}, outside the project, so nothing "
            "was written or deleted",
        ) from exc
    return rel


def _is_normal_relative(rel: str) -> bool:
    parts = rel.split("/")
    return (
        bool(rel)
        and not rel.startswith("/")
        and "\\" not in rel
        and "\0" not in rel
        and ":" not in parts[0]
        and all(part not in ("", ".", "..") for part in parts)
        and PurePosixPath(rel).as_posix() == rel
    )


def check_inside(root: Path, rel: str) -> Path:
    """``root / rel``, after checking that it resolves (symlinks followed) inside ``root``."""
    base = root.resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise PathOutsideProject(path=rel, resolved=str(target))
    return base / rel


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
    #: a user-owned file's new render, whose template changed (formatted only if shown)
    source: Output | None = field(default=None, compare=False, repr=False)
    #: with ``source``: the render it replaces ("" when an older lock did not record it)
    previous: str | None = field(default=None, compare=False, repr=False)

    def line(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.action.value:<9} {self.path}{reason}"

    def diff(self) -> str:
        """What would change on disk; for a user-owned file, how its template changed."""
        if self.source is not None and self.previous is not None:
            before, after = self.previous, self.source.text
            names = (f"a/{self.path} (previous render)", f"b/{self.path} (new render)")
        else:
            before = self.old or ""
            after = "" if self.action is Action.DELETE else self.new  # type: ignore[assignment]
            names = (f"a/{self.path}", f"b/{self.path}")
        if after is None or after == before:
            return ""
        return "".join(
            difflib.unified_diff(
                before.splitlines(keepends=True),
                after.splitlines(keepends=True),
                fromfile=names[0],
                tofile=names[1],
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
    """The file's text with its line endings as they are (no newline translation)."""
    try:
        with open(root / rel, encoding="utf-8", newline="") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _crlf(text: str | None) -> bool:
    return text is not None and "\r\n" in text


def _lf(text: str | None) -> str | None:
    return text.replace("\r\n", "\n") if text is not None else None


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
        check_inside(root, out.path)
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
        if entry.service in rendered.held:  # not rendered this time: left as it is
            entries[path] = entry
            continue
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
        if entry.pristine is not None and _lf(disk) == entry.pristine:
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
    out: Output, raw_disk: str | None, entry: LockEntry | None
) -> tuple[FileDecision, LockEntry | None]:
    key = out.render_key
    if entry is not None and entry.pristine is not None and entry.render_key == key:
        new = entry.pristine  # black would give exactly this again
    else:
        new = out.text
    record = LockEntry("rpcgen", out.service, _sha(new), new, key)
    crlf = _crlf(raw_disk)
    disk = _lf(raw_disk)  # compared and merged as LF; written back with the file's endings

    def d(action: Action, reason: str = "", text: str | None = None) -> FileDecision:
        if text is not None and crlf:
            text = text.replace("\n", "\r\n")
        return FileDecision(out.path, action, "rpcgen", out.service, reason, raw_disk, text)

    if disk is None:
        if entry is None:
            return d(Action.CREATE, text=new), record
        # The service is still in the spec and the user's code imports this file.
        return d(Action.CREATE, "rpcgen-owned and missing; created again", new), record
    if entry is None:
        if disk == new:
            return d(Action.UNCHANGED, "adopted"), record
        return d(Action.SKIP, "exists but was not generated by rpcgen; not touched"), None
    if has_conflict_markers(disk):
        # Not written, so the merge base stays the render the markers were made from.
        return d(Action.CONFLICT, "unresolved conflict markers from an earlier run"), entry
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
    # Keyed on the template's raw output, so an existing user file needs no formatting;
    # the formatted render is kept as ``pristine`` only to show how a template changed.
    sha = _sha(out.raw)
    if disk is None:
        if entry is None:
            record = LockEntry("user", out.service, sha, out.text)
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
    if entry is None:
        return (
            FileDecision(out.path, Action.SKIP, "user", out.service, "user-owned", disk),
            None,
        )
    if entry.sha256 == sha:
        return (
            FileDecision(out.path, Action.SKIP, "user", out.service, "user-owned", disk),
            entry,
        )
    # The template changed: said once (the lock moves on), shown as old render -> new.
    return (
        FileDecision(
            out.path,
            Action.SKIP,
            "user",
            out.service,
            "user-owned; its template changed: the change is shown below, not applied",
            disk,
            None,
            out,
            previous=entry.pristine if entry.pristine is not None else "",
        ),
        LockEntry("user", out.service, sha, out.text),
    )


_TEMP = re.compile(r"^\..+\.rpcgen-\d+\.tmp$")


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.rpcgen-{os.getpid()}.tmp")


def clean_stale_temps(root: Path, rels: Iterable[str]) -> list[str]:
    """Remove temp files that a killed run left beside the files it was writing.

    Call it holding the project lock: then no other rpcgen is writing, so every
    such file is stale. Returns the removed paths, relative to ``root``.
    """
    removed: list[str] = []
    folders = {PurePosixPath(rel).parent for rel in rels} | {PurePosixPath(".")}
    for folder in sorted(folders):
        try:
            names = os.listdir(root / folder)
        except OSError:
            continue
        for name in sorted(names):
            if _TEMP.match(name):
                (root / folder / name).unlink(missing_ok=True)
                removed.append((folder / name).as_posix())
    return removed


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
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
        target = check_inside(root, decision.path)  # again: the tree may have changed
        if decision.action is Action.DELETE:
            target.unlink(missing_ok=True)
        elif decision.new is not None and decision.action in (
            Action.CREATE,
            Action.UPDATE,
            Action.MERGE,
            Action.CONFLICT,
        ):
            write(target, decision.new)
    write(root / LOCK_FILE, plan.lock.dumps())
    if plan.conflicts:
        raise ConflictsWritten(plan.conflicts, plan)
