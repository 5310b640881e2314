"""What another local user's processes and files can do to this user's rpcgen: nothing
they can steer. Needs root to make the second user (skipped with a message otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rpcgen.runtime.process import list_servers
from rpcgen.runtime.ray_cluster import cluster_address
from tests.support.other_user import other_user
from tests.support.waiting import wait_until

TITLE = "rpcgen:Other port=12345 owner=1"


def _ps(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpcgen", "ps", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ps_marks_other_users_servers_and_hides_them_by_default() -> None:
    with other_user() as user:
        # Another user's process with an rpcgen title (any process may set any title).
        theirs = subprocess.Popen(
            ["bash", "-c", f'exec -a "{TITLE}" sleep 60'],
            user=user.uid,
            group=user.gid,
            extra_groups=[],
        )
        try:
            wait_until(
                lambda: any(s.pid == theirs.pid for s in list_servers()),
                timeout=10,
                what="the other user's process to show",
            )
            [found] = [s for s in list_servers() if s.pid == theirs.pid]
            assert (found.user, found.uid, found.mine) == (user.name, user.uid, False)
            hidden = _ps()
            assert hidden.returncode == 0, hidden.stderr
            assert str(theirs.pid) not in hidden.stdout
            assert "of other users not shown; --all shows them" in hidden.stdout
            shown = _ps("--all")
            [row] = [line for line in shown.stdout.splitlines() if str(theirs.pid) in line]
            assert row.startswith("Other") and f"{user.name} (another user)" in row
            rows = json.loads(_ps("--all", "--json").stdout)
            [mine_or_not] = [r for r in rows if r.get("pid") == theirs.pid]
            assert mine_or_not["mine"] is False and mine_or_not["user"] == user.name
        finally:
            theirs.kill()
            theirs.wait(10)


def test_a_ray_cluster_file_of_another_user_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    recorded = tmp_path / "ray_current_cluster"
    recorded.write_text("192.0.2.99:6379\n")
    assert cluster_address() == "192.0.2.99:6379"  # this user's own file is used
    with other_user() as user:
        os.chown(recorded, user.uid, user.gid)
        assert cluster_address() is None
        assert "ignoring" in caplog.text and "not a regular file of this user" in caplog.text
    recorded.unlink()
    (tmp_path / "elsewhere").write_text("192.0.2.98:6379\n")
    recorded.symlink_to(tmp_path / "elsewhere")
    assert cluster_address() is None  # a symlink is never followed
