"""Import isolation and the public API surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import rpcgen.runtime


def test_importing_the_runtime_never_imports_generator_dependencies() -> None:
    code = (
        "import sys, rpcgen.runtime\n"
        "bad = sorted(m for m in ('jinja2', 'typer', 'black', 'tomlkit', 'merge3', 'click')"
        " if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_all_matches_the_public_names() -> None:
    # "@py_builtins" & co.: pytest's assertion rewriting, which also covers the modules of
    # a distribution that ships a pytest plugin (ours does), adds them to the namespace.
    public = {n for n in dir(rpcgen.runtime) if not n.startswith(("_", "@"))}
    folder = Path(rpcgen.runtime.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")}
    assert set(rpcgen.runtime.__all__) == public - modules
    assert sorted(rpcgen.runtime.__all__) == list(rpcgen.runtime.__all__)
