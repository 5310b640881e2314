"""The trading example: committed code matches its spec, its own tests pass, and
`rpcgen ps` shows its three services while the demo runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import (
    ROOT,
    clean_pytest_env,
    finish,
    python_process,
    read_line,
    run_project_tests,
)
from tests.support.ray_cluster import RayNode
from tests.support.typecheck import rpcgen_shim, run_mypy

EXAMPLE = ROOT / "examples" / "trading"


def test_committed_code_matches_the_spec() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rpcgen.generator.cli", "generate", "--check", "-C", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_the_examples_own_generated_tests_pass() -> None:
    run_project_tests(EXAMPLE, "-q")


@pytest.mark.slow
def test_the_example_is_mypy_strict_clean(tmp_path: Path) -> None:
    shim = rpcgen_shim(tmp_path)
    result = run_mypy(
        [
            "--strict",
            "--explicit-package-bases",
            "--cache-dir",
            str(tmp_path / "c"),
            "services",
            "tests",
        ],
        EXAMPLE,
        Path(f"{shim}:{EXAMPLE}"),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rpcgen_ps_shows_the_three_services_while_the_demo_runs(tmp_path: Path) -> None:
    with python_process(
        "-m", "examples.trading.demo", "--free-ports", "--pause", "--data-dir", str(tmp_path)
    ) as demo:
        started: dict[str, int] = {}
        while len(started) < 3:
            line = read_line(demo)
            if line.startswith("started "):
                words = line.split()
                started[words[1]] = int(words[3])
        assert read_line(demo).startswith("ready")
        ps = subprocess.run(
            [sys.executable, "-m", "rpcgen.generator.cli", "ps", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        rows = {row["pid"]: row for row in json.loads(ps.stdout)}
        names = {"live_price_fetcher": "LivePriceFetcher", "position_manager": "PositionManager"}
        names["limit_order_manager"] = "LimitOrderManager"
        for attr, pid in started.items():
            assert rows[pid]["service"] == names[attr]
            assert rows[pid]["owner_pid"] == demo.pid
        code, out = finish(demo, "\n", timeout=120)
        assert code == 0, out
        assert "shut down cleanly" in out


def test_the_examples_tests_run_from_the_repo_root_too() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/trading/tests"],
        cwd=ROOT,
        env=clean_pytest_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout


@pytest.mark.xdist_group("ray")
def test_the_demo_and_its_tests_run_with_the_price_fetcher_on_ray(
    ray_head: RayNode, tmp_path: Path
) -> None:
    """The same example with `backend = "ray"` for LivePriceFetcher: a spec change and
    `rpcgen generate`, nothing else. The demo SIGKILLs the price fetcher's server (now
    the actor's worker), and Ray restarts it."""
    project = tmp_path / "trading"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    spec = project / "rpcgen.toml"
    text = spec.read_text()
    marker = "[services.LivePriceFetcher]\nport = 50001\n"
    assert marker in text
    spec.write_text(text.replace(marker, marker + 'backend = "ray"\n'))
    env = {k: v for k, v in clean_pytest_env().items() if not k.startswith("RAY_")}
    env.update(ray_head.env)
    generated = subprocess.run(
        [sys.executable, "-m", "rpcgen", "generate", "-C", str(project)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    changed = [line for line in generated.stdout.splitlines() if line.startswith("update")]
    assert changed == [  # the registry's header names the spec's hash
        "update    services/live_price_fetcher_base.py",
        "update    services/registry.py",
    ], generated.stdout
    demo = subprocess.run(
        [sys.executable, "demo.py", "--free-ports"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Ray restarted its actor" in demo.stdout, demo.stdout
    assert "shut down cleanly" in demo.stdout
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
