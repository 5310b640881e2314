"""Key files: the three forms that are read, and every file that is refused, in one line
naming the file and the fix (real files; no processes)."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from rpcgen.runtime import KeyFileError
from rpcgen.runtime.keyfile import create_key_file, read_key

KEY = bytes(range(32))


def _file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    "data",
    [
        KEY,
        KEY.hex().encode(),
        KEY.hex().encode() + b"\n",
        KEY.hex().upper().encode() + b"\r\n",
        base64.b64encode(KEY),
        base64.b64encode(KEY) + b"\n",
    ],
    ids=["raw", "hex", "hex+lf", "HEX+crlf", "base64", "base64+lf"],
)
def test_every_form_reads_as_the_same_key(tmp_path: Path, data: bytes) -> None:
    assert read_key(_file(tmp_path / "k", data)) == KEY


def _refusal(path: Path) -> str:
    with pytest.raises(KeyFileError) as info:
        read_key(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    return text


def test_a_fifo_is_refused_at_once_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "key"
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    assert "not a regular file" in _refusal(fifo)
    assert time.monotonic() - started < 5  # it used to block until a writer came


def test_a_large_file_and_short_or_odd_contents_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(2 << 30)  # 2 GiB of zeros (sparse)
    big.chmod(0o600)
    assert "too large to be a key" in _refusal(big)
    assert "not a 32-byte key" in _refusal(_file(tmp_path / "short", b"sixteen ascii ch"))
    assert "not a 32-byte key" in _refusal(_file(tmp_path / "odd", b"g" * 64))
    assert "not a 32-byte key" in _refusal(_file(tmp_path / "b64", base64.b64encode(KEY[:30])))


def test_loose_modes_folders_and_missing_files_are_refused(tmp_path: Path) -> None:
    assert "chmod 600" in _refusal(_file(tmp_path / "loose", KEY.hex().encode(), 0o640))
    assert "not a regular file" in _refusal(tmp_path)
    assert "No such file" in _refusal(tmp_path / "missing")


def test_a_symlink_is_followed_only_to_a_private_file_of_this_user(tmp_path: Path) -> None:
    # As a Kubernetes secret mount lays it out: key -> ..data/key -> the real file.
    data = tmp_path / "..data"
    data.mkdir()
    target = _file(data / "key", KEY.hex().encode() + b"\n")
    link = tmp_path / "key"
    link.symlink_to(Path("..data") / "key")
    assert read_key(link) == KEY
    target.chmod(0o644)
    assert "symlink target" in _refusal(link) and "chmod 600" in _refusal(link)
    target.unlink()
    assert "cannot be opened" in _refusal(link)  # dangling


def test_another_users_file_is_refused_directly_and_through_a_symlink(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a file owned by another user needs root")
    theirs = _file(tmp_path / "theirs", KEY.hex().encode())
    os.chown(theirs, 65534, 65534)
    assert "belongs to uid 65534" in _refusal(theirs)
    link = tmp_path / "link"
    link.symlink_to(theirs)
    assert "belongs to uid 65534" in _refusal(link)


def test_a_new_key_file_is_hex_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "new.key"
    key = create_key_file(path)
    assert len(key) == 32 and path.read_text() == key.hex() + "\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert create_key_file(path) == key  # exists: read, not replaced
