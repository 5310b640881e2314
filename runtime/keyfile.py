"""Key files: their format, and the checks a file passes before its key is trusted.

A key is 32 random bytes. A key file holds it in one of three forms, each exact:

* 64 hexadecimal digits (what rpcgen writes), or
* 44 characters of base64 (``base64.b64encode`` of the 32 bytes),

each optionally followed by one newline (``\\n`` or ``\\r\\n``), as secret stores
write them; or

* the 32 raw bytes (what rpcgen wrote before; still read).

The file must be a regular file that this user owns and only this user can read
(mode 0600 or stricter). A symlink is followed only when its target passes the
same checks (as in a Kubernetes secret mount). Nothing else is read: not a FIFO
(opened without blocking), not a device, not a large file. Each refusal is one
:class:`~rpcgen.runtime.errors.KeyFileError` line naming the file and the fix.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import secrets
import stat
from pathlib import Path

from .errors import KeyFileError

__all__ = ["KEY_BYTES", "create_key_file", "encode_key", "read_key"]

KEY_BYTES = 32
#: The longest form, with its newline: a larger file is not a key file.
_MOST = 64 + 2
_OPEN = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def encode_key(key: bytes) -> bytes:
    """The key file's content for ``key``: hex digits and a newline."""
    return key.hex().encode() + b"\n"


def _decode(path: Path, data: bytes) -> bytes:
    if len(data) == KEY_BYTES:
        return data  # the raw form
    text = data.removesuffix(b"\n").removesuffix(b"\r")
    try:
        if len(text) == 2 * KEY_BYTES:
            return bytes.fromhex(text.decode("ascii"))
        if len(text) == 44:
            key = base64.b64decode(text, validate=True)
            if len(key) == KEY_BYTES:
                return key
    except (ValueError, binascii.Error):
        pass
    raise KeyFileError(
        path=path,
        problem=f"holds {len(data)} bytes that are not a {KEY_BYTES}-byte key",
        fix="write 64 hex digits (python -c 'import secrets; print(secrets.token_hex(32))')",
    )


def _check(path: Path, info: os.stat_result, what: str = "it") -> None:
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(
            path=path,
            problem=f"{what} is not a regular file (a FIFO, device or folder)",
            fix="point authkey_file at a regular file",
        )
    if info.st_uid != os.getuid():
        raise KeyFileError(
            path=path,
            problem=f"{what} belongs to uid {info.st_uid}, not to this user",
            fix="use a key file this user owns",
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise KeyFileError(
            path=path,
            problem=f"{what} is readable by others (mode {stat.S_IMODE(info.st_mode):o})",
            fix=f"run: chmod 600 {path}",
        )
    if info.st_size > _MOST:
        raise KeyFileError(
            path=path,
            problem=f"{what} is {info.st_size} bytes, too large to be a key",
            fix="write 64 hex digits and nothing else",
        )


def _open(path: Path) -> int:
    """An fd of ``path`` (following a symlink only to a target that passes the checks)."""
    try:
        return os.open(path, _OPEN)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise KeyFileError(
                path=path, problem=exc.strerror or str(exc), fix="check the path"
            ) from None
    target = Path(os.path.realpath(path))
    try:
        fd = os.open(target, _OPEN)
    except OSError as exc:
        raise KeyFileError(
            path=path,
            problem=f"it is a symlink to {target}, which cannot be opened ({exc.strerror})",
            fix="point it at a regular 0600 file of this user",
        ) from None
    try:
        _check(path, os.fstat(fd), what=f"its symlink target {target}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_key(path: str | os.PathLike[str]) -> bytes:
    """The key in ``path``, after the checks above; one-line :class:`KeyFileError` if not."""
    key_path = Path(path)
    fd = _open(key_path)
    try:
        _check(key_path, os.fstat(fd))
        data = os.read(fd, _MOST + 1)
    finally:
        os.close(fd)
    return _decode(key_path, data)


def create_key_file(path: str | os.PathLike[str]) -> bytes:
    """The key in ``path``, or a fresh one written there (0600, hex) if there is none."""
    key_path = Path(path)
    try:
        fd = os.open(
            key_path,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0),
            0o600,
        )
    except FileExistsError:
        return read_key(key_path)
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(encode_key(key))
    return key
