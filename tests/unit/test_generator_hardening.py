"""Generator traps found by trying rpcgen as a newcomer and an attacker (issue 9, items 1-8).

Each test failed on the code before its fix. In-process: the CLI through its entry point.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcgen.generator import writelock
from rpcgen.generator.api import generate, new_service
from rpcgen.generator.errors import ProjectBusy
from rpcgen.generator.introspect import read_server_interface
from rpcgen.generator.render import docstring_body, py_literal, render_project
from rpcgen.generator.spec import HealthSpec, ProjectSpec, ServiceSpec
from rpcgen.generator.sync import LOCK_FILE
from tests.support.project import cli, snapshot, write

BASE = "services/foo_base.py"
CLIENT = "services/foo.py"
SERVER = "services/foo_server.py"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    new_service(root, "Foo", port=50010)
    return root


def read(root: Path, rel: str) -> str:
    return (root / rel).read_text(encoding="utf-8")


def one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpcgen: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- 1. a tampered lock file -------------------------------------------------------------


def _plant(root: Path, rel: str, text: str) -> None:
    """Add a lock entry for ``rel``: an owned file of a service no longer in the spec."""
    lock = json.loads(read(root, LOCK_FILE))
    lock["files"][rel] = {
        "owner": "rpcgen",
        "service": "Gone",
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "pristine": text,
    }
    (root / LOCK_FILE).write_text(json.dumps(lock))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "unnormalised"])
def test_a_lock_path_outside_the_project_deletes_nothing(
    project: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = project.parent / "other" / "data.txt"
    write(victim.parent, "data.txt", "precious\n")
    if kind == "dotdot":
        rel = "../other/data.txt"
    elif kind == "absolute":
        rel = str(victim)
    elif kind == "symlink":
        (project / "link").symlink_to(victim.parent, target_is_directory=True)
        rel = "link/data.txt"
    else:
        rel = "services/../../other/data.txt"
    _plant(project, rel, "precious\n")
    before = snapshot(project)
    code, _, err = cli(capsys, project, "generate")
    assert code == 2
    line = one_error(err)
    assert LOCK_FILE in line and ("outside the project" in line or "not a relative" in line)
    assert victim.read_text() == "precious\n"
    assert snapshot(project) == before


def test_a_generated_folder_that_is_a_symlink_out_of_the_project_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    root = tmp_path / "project"
    root.mkdir()
    (root / "tests").symlink_to(outside, target_is_directory=True)
    code, _, err = cli(capsys, root, "new", "Foo", "--port", "50010")
    assert code == 2 and "outside the project" in one_error(err)
    assert list(outside.iterdir()) == []
    assert not (root / "rpcgen.toml").exists()


# -- 2. spec values are validated and rendered as repr() only -----------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("interval_s", "inf"), ("interval_s", "nan"), ("interval_s", "-inf")],
)
def test_non_finite_numbers_are_refused(
    project: Path, field: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = project / "rpcgen.toml"
    spec.write_text(re.sub(rf"{field} = [0-9.]+", f"{field} = {value}", spec.read_text()))
    before = snapshot(project)
    code, _, err = cli(capsys, project, "generate")
    assert code == 2 and f"health.{field}: must be a positive number" in one_error(err)
    assert snapshot(project) == before


def test_a_non_finite_start_timeout_is_refused(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = project / "rpcgen.toml"
    spec.write_text(spec.read_text().replace("port = 50010", "port = 50010\nstart_timeout_s = nan"))
    code, _, err = cli(capsys, project, "generate")
    assert code == 2 and "start_timeout_s: must be a positive number, got nan" in one_error(err)


@pytest.mark.parametrize("host", ['x";import os;os.system("id")#', "a b", "", "-x", "a..b"])
def test_a_host_that_is_not_a_host_is_refused(
    project: Path, host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = project / "rpcgen.toml"
    spec.write_text(spec.read_text().replace('host = "127.0.0.1"', f"host = {json.dumps(host)}"))
    code, _, err = cli(capsys, project, "generate")
    assert code == 2 and "host: must be a host name or IP address" in one_error(err)


def test_no_spec_value_can_become_code_even_past_validation(tmp_path: Path) -> None:
    """The second layer: values reach the code only as repr() of a checked type."""
    hostile = 'x"; import os; os.system("echo pwned") #'
    spec = ProjectSpec(
        services=(ServiceSpec("Foo", 50010, "services.foo_server", "FooServer"),),
        host=hostile,
    )
    rendered = {o.path: o for o in render_project(tmp_path, spec).outputs}
    tree = ast.parse(rendered[BASE].text)
    values = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert values["DEFAULT_HOST"] == hostile and values["SERVICE_NAME"] == "Foo"
    assert "os.system" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    broken = ServiceSpec(
        "Foo", 50010, "services.foo_server", "FooServer", HealthSpec(interval_s=float("inf"))
    )
    with pytest.raises(TypeError, match="refusing to render"):
        render_project(tmp_path, ProjectSpec(services=(broken,)))


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), object(), b"x", {1: 1}, {"a": object()}, {"a": b"x"}]
)
def test_py_literal_refuses_what_is_not_a_checked_literal(value: object) -> None:
    with pytest.raises(TypeError):
        py_literal(value)


# -- 3. docstrings: any text -------------------------------------------------------------


def _first_line(doc: str | None) -> str | None:
    if not doc:
        return None
    return next((line.strip() for line in doc.strip().splitlines() if line.strip()), None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1, max_size=40))
def test_any_docstring_renders_to_code_that_means_the_same(text: str) -> None:
    import black

    from rpcgen.generator.render import _environment

    source = (
        "class FooServer:\n"
        f"    def look_rpc(self, symbol: str) -> str:\n        {text!r}\n        return symbol\n"
    )
    interface = read_server_interface(
        source, module="services.foo_server", class_name="FooServer", path=SERVER, service="Foo"
    )
    expected = _first_line(ast.get_docstring(ast.parse(source).body[0].body[0]))  # type: ignore[attr-defined]
    method = interface.methods[0]
    body = docstring_body(method.doc) if method.doc is not None else None
    raw = (
        _environment()
        .from_string('class C:\n    def look(self) -> None:\n        """{{ doc }}"""\n')
        .render(doc=body or "")
    )
    formatted = black.format_str(raw, mode=black.Mode())
    tree = ast.parse(formatted)
    got = ast.get_docstring(tree.body[0].body[0], clean=False)  # type: ignore[attr-defined]
    # black puts a space before a leading quote and after a closing one (its canonical form).
    assert (got or "").strip() == (expected or "").strip()


def test_a_docstring_ending_in_a_quote_generates(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = project / SERVER
    server.write_text(
        read(project, SERVER)
        + "\n    def lookup_rpc(self, symbol: str) -> str:\n"
        + '        """Look up a symbol such as "BTCUSD"\n\n        More text.\n        """\n'
        + "        return symbol\n"
    )
    code, _, err = cli(capsys, project, "generate")
    assert code == 0, err
    tree = ast.parse(read(project, BASE))
    method = next(
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "lookup"
    )
    # black ends a docstring that ends in a quote with a space: its canonical form.
    assert (ast.get_docstring(method) or "").rstrip() == 'Look up a symbol such as "BTCUSD"'


# -- 6. generate --diff is read-only -----------------------------------------------------


def test_diff_writes_nothing_even_with_conflicts(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = read(project, BASE).replace("DEFAULT_PORT = 50010", "DEFAULT_PORT = 1234  # mine")
    (project / BASE).write_text(text)
    spec = project / "rpcgen.toml"
    spec.write_text(spec.read_text().replace("port = 50010", "port = 50011"))
    before = snapshot(project)
    code, out, _ = cli(capsys, project, "generate", "--diff")
    assert code == 0
    assert f"conflict  {BASE}" in out and "+<<<<<<< yours (edited by hand)" in out
    assert snapshot(project) == before


def test_diff_of_a_user_file_shows_how_its_template_changed(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock_path = project / LOCK_FILE
    lock = json.loads(lock_path.read_text())
    entry = lock["files"][CLIENT]
    # As if an older rpcgen had rendered a different template for this user file.
    entry["pristine"] = entry["pristine"].replace("add your own helpers here", "old wording")
    entry["sha256"] = "0" * 64
    lock_path.write_text(json.dumps(lock))
    (project / CLIENT).write_text(read(project, CLIENT) + "\n# my helper\n")
    before = snapshot(project)
    code, out, _ = cli(capsys, project, "generate", "--diff")
    assert code == 0 and snapshot(project) == before
    assert f"--- a/{CLIENT} (previous render)" in out
    assert "-step with FooServer; old wording." in out
    assert "+step with FooServer; add your own helpers here." in out
    assert "my helper" not in out  # the user's file is not the subject


# -- 7. one writer at a time -------------------------------------------------------------


def test_a_second_writer_waits_then_fails_with_one_line(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writelock, "WAIT_S", 0.2)
    fd = os.open(project, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = snapshot(project)
        code, _, err = cli(capsys, project, "new", "Bar", "--port", "50011")
        assert code == 5 and "another rpcgen is writing the project" in one_error(err)
        assert snapshot(project) == before
        assert cli(capsys, project, "generate", "--check")[0] == 0  # readers take no lock
    finally:
        os.close(fd)
    assert cli(capsys, project, "new", "Bar", "--port", "50011")[0] == 0


def test_project_busy_is_raised_by_the_api_too(project: Path) -> None:
    fd = os.open(project, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ProjectBusy):
            generate(project, lock_timeout_s=0.05)
    finally:
        os.close(fd)


# -- 8. smaller ones ---------------------------------------------------------------------


def test_a_server_module_with_a_bom_is_read(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = read(project, SERVER) + "\n    def ping_rpc(self) -> str:\n        return 'pong'\n"
    (project / SERVER).write_bytes(b"\xef\xbb\xbf" + text.encode())
    code, _, err = cli(capsys, project, "generate")
    assert code == 0, err
    assert "def ping(self) -> str:" in read(project, BASE)


def test_a_spec_with_a_bom_is_read_and_kept(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = project / "rpcgen.toml"
    spec.write_bytes(b"\xef\xbb\xbf" + spec.read_bytes())
    assert cli(capsys, project, "generate")[0] == 0
    assert cli(capsys, project, "new", "Bar", "--port", "50011")[0] == 0
    data = spec.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"[services.Bar]" in data


def test_a_crlf_spec_keeps_its_line_endings(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = project / "rpcgen.toml"
    spec.write_bytes(spec.read_bytes().replace(b"\n", b"\r\n"))
    assert cli(capsys, project, "new", "Bar", "--port", "50011")[0] == 0
    data = spec.read_bytes()
    assert b"[services.Bar]" in data and data.count(b"\n") == data.count(b"\r\n")


@pytest.mark.parametrize("name", ["rpcgen.toml", "pyproject.toml"])
def test_a_file_that_is_not_utf8_is_a_one_line_error(
    project: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = project / name
    target.write_bytes((target.read_bytes() if target.exists() else b"") + b"# caf\xe9\n")
    before = snapshot(project)
    code, _, err = cli(capsys, project, "generate")
    assert code == 2 and f"{name}: not UTF-8 text" in one_error(err)
    assert snapshot(project) == before


@pytest.mark.parametrize(
    "black_config",
    [
        'line-length = "wide"',
        'target-version = ["py99"]',
        "target-version = 3",
        "preview = 1",
        "line-length = 0",
    ],
)
def test_a_bad_black_setting_is_a_one_line_error(
    project: Path, black_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project, "pyproject.toml", f"[tool.black]\n{black_config}\n")
    before = snapshot(project)
    code, _, err = cli(capsys, project, "generate")
    assert code == 2 and "pyproject.toml [tool.black]" in one_error(err)
    assert snapshot(project) == before


def test_a_very_long_service_name_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "A" + "b" * 299
    code, _, err = cli(capsys, tmp_path, "new", name, "--port", "50010")
    assert code == 2 and "use at most 64" in one_error(err)
    assert len(one_error(err)) < 200
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("package", "json", "would shadow the module 'json'"),
        ("package", "os.path", "would shadow the module 'os'"),
        ("package", "rpcgen", "would shadow the module 'rpcgen'"),
    ],
)
def test_a_package_named_like_the_standard_library_is_refused(
    project: Path, key: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = project / "rpcgen.toml"
    spec.write_text(spec.read_text().replace('package = "services"', f'{key} = "{value}"'))
    code, _, err = cli(capsys, project, "generate")
    assert code == 2 and message in one_error(err)


def test_temp_files_of_a_killed_run_are_removed_by_the_next(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = [project / "services/.foo_base.py.rpcgen-99999.tmp", project / ".x.rpcgen-1.tmp"]
    for path in stale:
        path.write_text("half a file")
    keep = project / "services/.foo_base.py.rpcgen-x.tmp"  # not our pattern: not ours
    keep.write_text("someone else's")
    code, _, err = cli(capsys, project, "generate")
    assert code == 0 and "removed 2 temp file(s) left by an interrupted run" in err
    assert not any(path.exists() for path in stale) and keep.exists()


def test_a_merge_keeps_crlf_line_endings(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = read(project, BASE).replace('"""Foo service', '"""Foo service (my note)')
    (project / BASE).write_bytes(text.replace("\n", "\r\n").encode())
    spec = project / "rpcgen.toml"
    spec.write_text(spec.read_text().replace("port = 50010", "port = 50011"))
    code, out, _ = cli(capsys, project, "generate")
    assert code == 0 and f"merge     {BASE}" in out
    data = (project / BASE).read_bytes()
    assert b"(my note)" in data and b"DEFAULT_PORT = 50011" in data
    assert data.count(b"\n") == data.count(b"\r\n")
    assert cli(capsys, project, "generate", "--check")[0] == 0


def test_a_crlf_copy_of_an_unedited_file_is_not_drift(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkout with core.autocrlf: the same text with other line endings."""
    (project / BASE).write_bytes(read(project, BASE).replace("\n", "\r\n").encode())
    assert cli(capsys, project, "generate", "--check")[0] == 0


def test_an_empty_tool_rpcgen_table_is_filled_in_by_new(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "pyproject.toml", '[project]\nname = "app"\n\n[tool.rpcgen]\n')
    code, _, err = cli(capsys, tmp_path, "new", "Foo", "--port", "50010")
    assert code == 0, err
    text = read(tmp_path, "pyproject.toml")
    assert "schema_version = 1" in text and "[tool.rpcgen.services.Foo]" in text
    assert (tmp_path / BASE).exists()


def test_a_public_method_without_the_rpc_suffix_gets_a_note() -> None:
    source = (
        "class FooServer:\n"
        "    def look_rpc(self) -> int:\n        return 1\n"
        "    def lookup(self) -> int:\n        return 2\n"
        "    def _helper(self) -> None:\n        pass\n"
    )
    interface = read_server_interface(
        source, module="services.foo_server", class_name="FooServer", path=SERVER, service="Foo"
    )
    assert [m.rpc_name for m in interface.methods] == ["look_rpc"]
    notes = [n for n in interface.notes if "lookup" in n]
    assert notes == [
        f"{SERVER}: FooServer.lookup() is not served: only methods named *_rpc are "
        "(rename it lookup_rpc to serve it)"
    ]
    assert not any("_helper" in n for n in interface.notes)
