"""Generator under fuzzed input: specs, CLI arguments, and runs killed part-way.

Every invalid input gives exit 2, one clean line per problem and no file written;
nothing ever prints a traceback or an internal error; an interrupted run leaves
every file whole (old or new) and the next run recovers.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcgen.generator.api import new_service, plan_generate
from rpcgen.generator.cli import main
from rpcgen.generator.sync import apply_plan, atomic_write
from tests.reliability.conftest import Log
from tests.support.project import snapshot

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="rpcgen-fuzz-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)  # the CLI's default project dir: never the repo
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(previous)
    return code, out.getvalue(), err.getvalue()


def check_outcome(
    code: int, out: str, err: str, before: dict[str, str], after: dict[str, str]
) -> None:
    assert code in (0, 1, 2, 3), (code, out, err)
    assert "Traceback" not in out + err and "internal error" not in err
    if code == 2:
        lines = err.strip().splitlines()
        if lines:  # a bare command prints its help instead
            assert all(line.startswith("rpcgen: error: ") for line in lines), err
        assert after == before, "a rejected input wrote files"


names = st.one_of(
    st.sampled_from(
        [
            "Foo",
            "PriceFetcher",
            "123bad",
            "my-service",
            "class",
            "Json",
            "None",
            "",
            "Registry",
            "Port",
        ]
    ),
    st.text(max_size=12),
)
values = st.one_of(
    st.integers(-5, 70_000),
    st.booleans(),
    st.text(max_size=10),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(max_size=5), max_size=3),
)
health = st.dictionaries(
    st.sampled_from(
        ["enabled", "interval_s", "max_consecutive_failures", "auto_restart", "intervl"]
    ),
    values,
    max_size=4,
)
service = st.fixed_dictionaries(
    {},
    optional={
        "port": st.one_of(st.integers(1000, 66_000), values),
        "server_module": st.one_of(
            st.sampled_from(["services.x_server", "a..b", "1x", "x"]), values
        ),
        "server_class": values,
        "health": health,
        "start_timeout_s": values,
        "depends_on": st.lists(names, max_size=2),
        "prot": values,
    },
)
specs = st.fixed_dictionaries(
    {"services": st.dictionaries(names, service, max_size=3)},
    optional={
        "schema_version": st.one_of(st.just(1), values),
        "package": st.one_of(st.just("services"), values),
        "tests_dir": st.one_of(st.just("tests"), values),
        "host": values,
        "pakage": values,
    },
)


FIELDS = [
    ("schema_version",),
    ("package",),
    ("tests_dir",),
    ("host",),
    ("services",),
    ("services", "Foo"),
    ("services", "Foo", "port"),
    ("services", "Foo", "server_module"),
    ("services", "Foo", "server_class"),
    ("services", "Foo", "start_timeout_s"),
    ("services", "Foo", "depends_on"),
    ("services", "Foo", "health"),
    ("services", "Foo", "health", "enabled"),
    ("services", "Foo", "health", "interval_s"),
    ("services", "Foo", "health", "max_consecutive_failures"),
    ("services", "Foo", "health", "auto_restart"),
    ("services", "Bar", "depends_on"),
]


def _valid() -> dict[str, Any]:
    return {
        "schema_version": 1,
        "package": "services",
        "services": {
            "Foo": {"port": 50010, "health": {"enabled": True, "interval_s": 5}},
            "Bar": {"port": 50011, "depends_on": ["Foo"]},
        },
    }


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec with one to three fields replaced by random values of any type."""
    spec = _valid()
    for path, value in draw(
        st.lists(st.tuples(st.sampled_from(FIELDS), values), min_size=1, max_size=3)
    ):
        node: Any = spec
        for key in path[:-1]:
            if not isinstance(node, dict) or not isinstance(node.get(key), dict):
                break
            node = node[key]
        else:
            if isinstance(node, dict):
                node[path[-1]] = value
    return spec


@pytest.mark.slow
@FUZZ
@given(spec=st.one_of(mutated_specs(), specs))
def test_fuzzed_structured_specs(spec: dict[str, Any], reliability_log: Log) -> None:
    with scratch() as root:
        try:
            text = tomlkit.dumps(spec)
        except Exception:
            return  # not representable as TOML: nothing to test
        (root / "rpcgen.toml").write_text(text)
        before = snapshot(root)
        code, out, err = run(["generate"], root)
        check_outcome(code, out, err, before, snapshot(root))
        if code == 0:
            assert run(["generate", "--check"], root)[0] == 0
    reliability_log.record("fuzzed spec files (structured)", rounds=1, failures=0)


@pytest.mark.slow
@FUZZ
@given(text=st.text(max_size=300))
def test_fuzzed_spec_text(text: str, reliability_log: Log) -> None:
    with scratch() as root:
        (root / "rpcgen.toml").write_text(text)
        before = snapshot(root)
        for argv in (["generate"], ["generate", "--check"], ["list"], ["new", "Foo"]):
            code, out, err = run(argv, root)
            if code == 2:
                check_outcome(code, out, err, before, snapshot(root))
            else:
                check_outcome(code, out, err, before, before)
                break  # a valid spec wrote files; the rest is covered elsewhere
    reliability_log.record("fuzzed spec files (raw text)", rounds=1, failures=0)


words = st.sampled_from(
    [
        "new",
        "generate",
        "list",
        "ps",
        "--check",
        "--dry-run",
        "--diff",
        "--port",
        "--server-module",
        "--health",
        "--no-health",
        "--health-interval",
        "--max-failures",
        "--auto-restart",
        "--no-auto-restart",
        "--depends-on",
        "--json",
        "--version",
        "--help",
        "Foo",
        "Bar",
        "123",
        "80",
        "50010",
        "-1",
        "x.y",
        "bad name",
        "--bogus",
        "",
        "\x00",
    ]
)


@pytest.mark.slow
@FUZZ
@given(argv=st.lists(st.one_of(words, st.text(max_size=8)), max_size=6))
def test_fuzzed_cli_arguments(argv: list[str], reliability_log: Log) -> None:
    if any(a.startswith("-C") or a == "--project-dir" for a in argv):
        return
    with scratch() as root:
        before = snapshot(root)
        code, out, err = run(argv, root)
        check_outcome(code, out, err, before, snapshot(root))
    reliability_log.record("fuzzed CLI arguments", rounds=1, failures=0)


@pytest.mark.slow
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(survive=st.integers(0, 12))
def test_generation_killed_after_any_write_recovers(survive: int, reliability_log: Log) -> None:
    with scratch() as root:
        new_service(root, "Foo", port=50010)
        new_service(root, "Bar", port=50011, depends_on=["Foo"])
        spec = root / "rpcgen.toml"
        spec.write_text(spec.read_text().replace("port = 50010", "port = 50099"))
        server = root / "services/foo_server.py"
        server.write_text(
            server.read_text() + "\n    def more_rpc(self, x: int) -> int:\n        return x\n"
        )
        old = {p: (root / p).read_text() for p in snapshot(root)}
        plan = plan_generate(root)
        new = {d.path: d.new for d in plan.decisions if d.new is not None}
        written: list[Path] = []

        def dying(path: Path, text: str) -> None:
            if len(written) >= survive:
                raise KeyboardInterrupt  # killed between two writes
            atomic_write(path, text)
            written.append(path)

        with contextlib.suppress(KeyboardInterrupt):
            apply_plan(root, plan, write=dying)
        for rel in snapshot(root):
            if rel.endswith(".tmp"):
                pytest.fail(f"temp file left: {rel}")
            text = (root / rel).read_text()
            assert text in (old.get(rel), new.get(rel), plan.lock.dumps()), f"{rel} is half-written"
        assert run(["generate"], root)[0] == 0
        assert run(["generate", "--check"], root)[0] == 0
        assert "def more(self, x: int) -> int:" in (root / "services/foo_base.py").read_text()
    reliability_log.record("generator killed between file writes", rounds=1, failures=0)
