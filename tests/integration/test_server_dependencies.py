"""A server that uses another service (``depends_on``), generated the documented way:
its ``__init__`` names the dependency, and rpcgen hands it the client.

A generated project (DocIndex, and a Summarizer whose server reads DocIndex) is
driven by ``tests/support/dependency_driver.py`` in a fresh interpreter per start
method: direct mode, RPC mode, SIGKILLs of the dependency, of the dependent and of
both, and two instances side by side.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rpcgen.generator.api import generate, new_service
from tests.support import dependency_driver
from tests.support.procs import run_project_tests
from tests.support.project import write
from tests.support.typecheck import rpcgen_shim, run_mypy, run_ruff
from tests.support.waiting import free_port

DRIVER = Path(dependency_driver.__file__)
METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deps")
    new_service(root, "DocIndex", port=free_port())
    new_service(root, "Summarizer", port=free_port(), depends_on=["DocIndex"])
    skeleton = (root / "services/summarizer_server.py").read_text()
    write(root, "services/doc_index_server.py", dependency_driver.DOC_INDEX_SERVER)
    write(root, "services/summarizer_server.py", dependency_driver.SUMMARIZER_SERVER)
    write(root, "skeleton.txt", skeleton)
    # A copy in the project: beside tests/support, its own folder would come first on
    # sys.path, and tests/support/services.py would shadow the project's package.
    write(root, "drive.py", DRIVER.read_text())
    generate(root)
    return root


def drive(root: Path, scenario: str, method: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "drive.py", scenario, method],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_the_skeleton_of_a_dependent_server_takes_its_dependency(project: Path) -> None:
    skeleton = (project / "skeleton.txt").read_text()
    assert "    from services.doc_index import DocIndex" in skeleton
    assert "def __init__(self, doc_index: DocIndex) -> None:" in skeleton
    base = (project / "services/summarizer_base.py").read_text()
    assert 'server_kwargs={"doc_index": doc_index}' in base
    assert "return SummarizerServer(doc_index=self.doc_index)" in base
    assert "serve_summarizer, address, authkey, server_ready, self.doc_index" in base
    assert 'rpc_server_dependencies = ("doc_index",)' in base


def test_direct_mode_gives_the_server_the_direct_client(project: Path) -> None:
    [out] = drive(project, "direct", "fork")
    assert out["summary"] == "alpha beta"
    assert out["server_pid"] is None
    assert out["index_pid"] == out["me"]  # DocIndex's direct server, in this process


@pytest.mark.parametrize("method", METHODS)
def test_rpc_mode_follows_restarts_of_the_dependency_and_of_itself(
    project: Path, method: str
) -> None:
    steps = {out.pop("step"): out for out in drive(project, "kills", method)}
    rpc = steps["rpc"]
    assert rpc["summary"] == "alpha beta"
    assert rpc["index_pid"] == rpc["doc_index_pid"]  # the server reaches DocIndex's server
    assert rpc["summarizer_self"] == rpc["summarizer_pid"] != rpc["index_pid"]
    # Each answer comes from the restarted DocIndex (its new text, its new pid).
    expected = {
        "dependency killed": "delta epsilon",
        "dependent killed": "delta epsilon",
        "both killed": "eta theta",
    }
    for step, summary in expected.items():
        assert steps[step]["summary"] == summary, step
        assert steps[step]["index_pid"] == steps[step]["doc_index_pid"], step
    assert len({rpc["doc_index_pid"], steps["dependency killed"]["doc_index_pid"]}) == 2


def test_two_instances_each_server_gets_its_own_and_attach_asks_for_a_port(
    project: Path,
) -> None:
    steps = {out.pop("step"): out for out in drive(project, "two", "fork")}
    own = steps["each its own"]
    assert (own["first"], own["second"]) == ("first instance", "second instance")
    assert own["first_index"] == own["first_pid"] != own["second_index"] == own["second_pid"]
    by_name = steps["attach by name"]
    # ours, and any other test's DocIndex running meanwhile (tests run in parallel)
    found = {port for port, _ in by_name["found"]}
    assert set(by_name["ports"]) <= found
    assert f"{len(found)} services named 'DocIndex' run here" in by_name["error"]
    assert "pass port= to choose one" in by_name["error"]
    assert steps["attach by port"]["text"] == "second instance"


def test_the_dependent_project_is_clean_and_its_tests_pass(project: Path) -> None:
    shim = rpcgen_shim(project)
    mypy = run_mypy(["--strict", "services"], project, shim)
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
    ruff = run_ruff(["check", "--isolated", "services"], project)
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    run_project_tests(project)
