"""The service directory against a folder that is swapped, and files planted in it:
the owner writes its key and entries only into a folder it checked, through a handle it
holds, with names nobody can guess."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from rpcgen.runtime.directory import directory_folder, lookup
from tests.support.services import Echo


@pytest.fixture
def own_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime / "rpcgen"


def test_a_planted_temp_file_symlink_is_never_written_through(
    own_runtime_dir: Path, tmp_path: Path, port: int
) -> None:
    folder = directory_folder()
    assert folder == own_runtime_dir
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    for pid in range(os.getpid(), os.getpid() + 50):  # the old, predictable temp names
        for stem in (f"Echo-{port}.json", f"Echo-{port}.key"):
            (folder / f".{stem}.{pid}.tmp").symlink_to(victim)
    with Echo(port) as svc:
        assert svc.echo(1) == 1
        entry = lookup(port=port, service="Echo")
        assert entry is not None and entry.pid == svc.server_pid
    assert victim.read_text() == "untouched"


def test_a_swapped_folder_gets_neither_the_key_nor_an_entry(
    own_runtime_dir: Path, tmp_path: Path, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with Echo(port) as svc:
        folder = directory_folder()
        assert (folder / f"Echo-{port}.key").exists()
        # Someone renames the folder away and puts a symlink to a folder of theirs there.
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        theirs.chmod(0o777)
        folder.rename(folder.with_name("moved"))
        folder.symlink_to(theirs)
        assert svc.restart()  # a restart publishes again
        assert svc.echo("still served") == "still served"
        assert list(theirs.iterdir()) == []  # no key, no entry, no temp file
        assert "not published in the service directory" in caplog.text
