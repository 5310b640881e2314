"""The rpcgen command line, through the real console script and typer's CliRunner."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rpcgen.generator.cli import app
from tests.support.project import cli, snapshot


def test_help_does_not_import_black_or_the_generator() -> None:
    code = (
        "import sys\n"
        "from rpcgen.generator.cli import main\n"
        "rc = main(['--help'])\n"
        "heavy = [m for m in ('black', 'jinja2', 'tomlkit', 'merge3') if m in sys.modules]\n"
        "print('HEAVY:' + ','.join(heavy), rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY: 0" in out.stdout
    for command in ("new", "generate", "list"):
        assert command in out.stdout


def test_console_script_version_and_help() -> None:
    # This interpreter's own script, never PATH's: /usr/bin/rpcgen is the ONC RPC compiler.
    exe = Path(sys.executable).parent / "rpcgen"
    assert exe.is_file(), "the rpcgen console script is not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("rpcgen ")
    out = subprocess.run([exe, "new", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--port" in out.stdout and "--dry-run" in out.stdout


def _chosen_port(out: str, name: str) -> int:
    # Ports busy on this machine are skipped, and other tests hold OS-assigned ports in
    # the same range, so the exact number is not fixed: check what is promised.
    match = re.search(rf"service {name} on port (\d+) \(chosen: next free above the highest", out)
    assert match is not None, out
    return int(match.group(1))


def test_new_without_port_picks_the_next_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, tmp_path, "new", "Alpha")
    assert code == 0
    assert "created rpcgen.toml" in out
    alpha = _chosen_port(out, "Alpha")
    assert alpha >= 50000
    code, out, _ = cli(capsys, tmp_path, "new", "Beta", "--port", str(alpha + 7))
    assert code == 0 and f"service Beta on port {alpha + 7} (as given)" in out
    code, out, _ = cli(capsys, tmp_path, "new", "Gamma")
    assert code == 0
    gamma = _chosen_port(out, "Gamma")
    assert gamma > alpha + 7
    assert f"port = {gamma}" in (tmp_path / "rpcgen.toml").read_text()


def test_new_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, tmp_path, "new", "Alpha", "--port", "50001", "--dry-run")
    assert (
        code == 0
        and "would create rpcgen.toml" in out
        and "create    services/alpha_base.py" in out
    )
    assert snapshot(tmp_path) == {}


def test_new_health_options_reach_the_spec_and_the_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = cli(
        capsys,
        tmp_path,
        "new",
        "Alpha",
        "--port",
        "50001",
        "--no-health",
        "--health-interval",
        "5",
        "--max-failures",
        "2",
        "--no-auto-restart",
    )
    assert code == 0
    text = (tmp_path / "services/alpha_base.py").read_text()
    for line in (
        'options.setdefault("enable_health_check", False)',
        'options.setdefault("health_check_interval_s", 5.0)',
        'options.setdefault("max_consecutive_failures", 2)',
        'options.setdefault("enable_auto_restart", False)',
    ):
        assert line in text


@pytest.mark.parametrize(
    "args",
    [
        ["new"],
        ["new", "Foo", "--port", "notaport"],
        ["new", "Foo", "--bogus"],
        ["generate", "--chekc"],
        ["frobnicate"],
        ["new", "Foo", "--port", "80"],
        ["new", "Foo", "--max-failures", "0"],
        ["new", "Foo", "--health-interval", "-1"],
        ["new", "Foo", "--server-module", "bad module"],
    ],
)
def test_bad_usage_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = cli(capsys, tmp_path, *args)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rpcgen: error: ")
    assert "Traceback" not in out + err
    assert snapshot(tmp_path) == {}


def test_list_shows_one_row_per_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, tmp_path, "new", "Alpha", "--port", "50001")
    cli(capsys, tmp_path, "new", "Beta", "--port", "50002", "--no-health")
    code, out, _ = cli(capsys, tmp_path, "list")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[1].split()[:2] == ["Alpha", "50001"] and "every 60s, 3x, restart" in lines[1]
    assert lines[2].split()[:2] == ["Beta", "50002"] and " off " in lines[2]


def test_typer_cli_runner_drives_the_app(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["new", "Alpha", "--port", "50001", "-C", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "create    services/alpha_base.py" in result.output
    result = runner.invoke(app, ["generate", "--check", "-C", str(tmp_path)])
    assert result.exit_code == 0 and "up to date" in result.output
    result = runner.invoke(app, ["list", "-C", str(tmp_path)])
    assert "Alpha" in result.output
