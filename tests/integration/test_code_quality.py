"""The project's own code is mypy --strict and ruff clean (as the generated code must be)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.typecheck import rpcgen_shim, run_mypy, run_ruff

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_mypy_strict_on_runtime_and_tests(tmp_path: Path) -> None:
    shim = rpcgen_shim(tmp_path)
    result = run_mypy(
        [
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            "-p",
            "rpcgen.runtime",
            "-p",
            "rpcgen.generator",
            "-p",
            "tests",
        ],
        cwd=ROOT,
        shim=shim,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_clean() -> None:
    result = run_ruff(["check", "runtime", "generator", "tests", "benchmarks", "examples"], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
