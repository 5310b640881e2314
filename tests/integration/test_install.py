"""A real wheel builds, and carries the packages, the templates and py.typed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.procs import ROOT


@pytest.mark.slow
def test_wheel_contains_the_mapped_packages(tmp_path: Path) -> None:
    # Build from a copy: a build writes build/ and *.egg-info next to the sources.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".*_cache"),
    )
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(src)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("rpcgen-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    for required in (
        "rpcgen/runtime/__init__.py",
        "rpcgen/runtime/service.py",
        "rpcgen/runtime/py.typed",
        "rpcgen/generator/__init__.py",
        "rpcgen/templates/__init__.py",
    ):
        assert required in names
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)
    assert "rpcgen = rpcgen.generator.cli:main" in scripts
