"""Temp projects for generator tests: write files, run the CLI, snapshot the tree."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rpcgen.generator.cli import main


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> sha256), to prove nothing was written."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def cli(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str, str]:
    """Run ``rpcgen ARGS -C root`` in-process through the real entry point."""
    argv = [*args]
    if args and args[0] in ("new", "generate", "list"):
        argv += ["-C", str(root)]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
