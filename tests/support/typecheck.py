"""Run mypy and ruff as a user would, with rpcgen importable under any install mode.

mypy cannot follow the import hook of a setuptools editable install, so it is
pointed (MYPYPATH) at a throwaway tree of symlinks to the installed packages.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path


def rpcgen_shim(root: Path) -> Path:
    """A directory holding ``rpcgen/<pkg>`` symlinks to the importable packages."""
    shim = root / "rpcgen-shim"
    pkg = shim / "rpcgen"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in ("runtime", "generator", "templates"):
        module = importlib.import_module(f"rpcgen.{name}")
        link = pkg / name
        if module.__file__ and not link.exists():
            link.symlink_to(Path(module.__file__).parent, target_is_directory=True)
    return shim


def run_mypy(args: list[str], cwd: Path, shim: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MYPYPATH=str(shim))
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_ruff(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
