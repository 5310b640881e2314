"""A project generated before the backend seam (by rpcgen at commit aaea30c, with a
user's own server method, client helper and test) regenerates cleanly and runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.procs import ROOT, run_project_tests

OLD_PROJECT = ROOT / "tests" / "fixtures" / "project_before_seam"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_an_old_project_regenerates_without_a_change_and_its_tests_pass(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(OLD_PROJECT, project)
    before = _snapshot(project)
    generated = subprocess.run(
        [sys.executable, "-m", "rpcgen", "generate", "-C", str(project)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    after = _snapshot(project)
    # The same bytes in every file. The lock moves on only for the user-owned tests, whose
    # template has changed since (the change is shown, not applied).
    lock_before, lock_after = (json.loads(s.pop(".rpcgen.lock")) for s in (before, after))
    assert after == before, generated.stdout
    moved = {
        path
        for path, entry in lock_after["files"].items()
        if entry != lock_before["files"].get(path)
    }
    assert all(lock_after["files"][path]["owner"] == "user" for path in moved), moved
    assert all(
        f"skip      {path} (user-owned; its template changed" in generated.stdout for path in moved
    )
    # Its own tests, the user's included, against today's runtime: real server processes.
    tests = run_project_tests(project, "-v", "-W", "error")
    assert "13 passed" in tests.stdout, tests.stdout
    assert "test_value_uses_the_pricer PASSED" in tests.stdout, tests.stdout
