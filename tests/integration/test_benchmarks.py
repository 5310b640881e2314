"""The benchmarks keep working: CI runs the --quick mode. No timing is asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import ROOT


@pytest.mark.slow
@pytest.mark.timeout(480)  # every group, Ray's too: a smoke run, but a long one
@pytest.mark.xdist_group("ray")  # it starts a Ray of its own: not beside the Ray tests' head
def test_quick_benchmark_run_produces_every_group(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=450,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    groups = {row["group"] for row in data["rows"]}
    assert {
        "calls/steady",
        "lifecycle",
        "throughput",
        "generator",
        "peers",
        "registry",
        "sharing",
        "aio",
        "ray",  # measured, or one row saying it was skipped (ray not installed)
        "tls",
        "streams",
    } <= groups
    names = {row["name"] for row in data["rows"]}
    for expected in (
        "steady: rpcgen client method (median)",
        "start->first call, rpcgen (fork)",
        "shutdown, rpcgen (spawn)",
        "restart after SIGKILL, kill->first call (fork)",
        "4 client processes",
        "rpcgen --help",
        "attach->first call",
        "recovery after SIGKILL, non-owner (kill->first call)",
    ):
        assert expected in names
    for expected in ("asyncio client, 64 in flight", "sync client, 8 threads"):
        assert any(name.startswith(expected) for name in names), expected
    for expected in ("pinned, trivial call: rpcgen", "unpinned, trivial call: rpcgen"):
        assert expected in names
    assert any(name.startswith("stream of 16-byte items vs") for name in names)
    assert "benchmark" in result.stdout  # the table was printed


def test_unknown_group_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "unknown benchmark group" in result.stderr


def test_the_ab_run_compares_two_trees() -> None:
    # HEAD is in every clone: side A is the committed tree, side B the working tree.
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab", "--base", "HEAD", "--rounds", "2", "--starts", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["base"] == "HEAD" and report["rounds"] == 2
    for key in ("call_us", "start_ms"):
        assert len(report[key]["round_ratios"]) == 2
        assert report[key]["A"] > 0 and report[key]["B"] > 0
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "rpcgen-ab-" not in worktrees.stdout  # removed again
