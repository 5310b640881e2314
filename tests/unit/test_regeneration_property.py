"""Property: random user edits plus spec and server-class changes, regenerated again and
again, never drop a user's line: each is merged, or shown inside conflict markers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcgen.generator.api import generate, new_service
from rpcgen.generator.errors import ConflictsWritten
from rpcgen.generator.sync import has_conflict_markers

BASE = "services/foo_base.py"
CLIENT = "services/foo.py"
TEST = "tests/test_foo.py"
SERVER = "services/foo_server.py"

edit_file = st.tuples(
    st.just("edit"), st.sampled_from([BASE, BASE, CLIENT, TEST]), st.integers(0, 10_000)
)
change_port = st.tuples(st.just("port"), st.integers(50100, 50999), st.just(0))
change_health = st.tuples(st.just("health"), st.integers(1, 500), st.just(0))
add_method = st.tuples(st.just("add_method"), st.just(""), st.just(0))
remove_method = st.tuples(st.just("remove_method"), st.just(""), st.integers(0, 100))
steps = st.lists(
    st.one_of(edit_file, edit_file, change_port, change_health, add_method, remove_method),
    min_size=1,
    max_size=6,
)

_CONFLICT = re.compile(r"<<<<<<< [^\n]*\n(.*?)\|\|\|\|\|\|\| [^\n]*\n.*?>>>>>>> [^\n]*\n", re.S)


def _resolve_keeping_yours(text: str) -> str:
    return _CONFLICT.sub(r"\1", text)


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=steps)
def test_no_user_line_is_ever_lost_without_a_conflict_marker(
    tmp_path_factory: pytest.TempPathFactory, plan: list[tuple[str, object, int]]
) -> None:
    root: Path = tmp_path_factory.mktemp("prop")
    new_service(root, "Foo", port=50010)
    expected: dict[str, set[str]] = {BASE: set(), CLIENT: set(), TEST: set()}
    methods: list[str] = []
    for number, (kind, arg, pos) in enumerate(plan):
        if kind == "edit":
            rel = str(arg)
            path = root / rel
            lines = path.read_text().splitlines(keepends=True)
            marker = f"# user line {number} in {rel}"
            lines.insert(pos % (len(lines) + 1), marker + "\n")
            path.write_text("".join(lines))
            expected[rel].add(marker)
        elif kind == "port":
            spec = root / "rpcgen.toml"
            spec.write_text(re.sub(r"port = \d+", f"port = {arg}", spec.read_text()))
        elif kind == "health":
            spec = root / "rpcgen.toml"
            spec.write_text(re.sub(r"interval_s = [\d.]+", f"interval_s = {arg}", spec.read_text()))
        elif kind == "add_method":
            name = f"m{number}"
            methods.append(name)
            server = root / SERVER
            server.write_text(
                server.read_text()
                + f"\n    def {name}_rpc(self, x: int) -> int:\n        return x + {number}\n"
            )
        elif kind == "remove_method" and methods:
            name = methods.pop(pos % len(methods))
            server = root / SERVER
            server.write_text(
                re.sub(
                    rf"\n    def {name}_rpc\(.*?\n        return [^\n]*\n",
                    "\n",
                    server.read_text(),
                    flags=re.S,
                )
            )
        conflicted: list[str] = []
        try:
            generate(root)
        except ConflictsWritten as exc:
            conflicted = exc.paths
        for rel, markers in expected.items():
            text = (root / rel).read_text()
            for marker in markers:
                assert marker in text, f"{marker!r} lost from {rel} after step {number} ({kind})"
        for rel in conflicted:
            path = root / rel
            assert has_conflict_markers(path.read_text())
            path.write_text(_resolve_keeping_yours(path.read_text()))
        # Regenerating again right away changes nothing (idempotence).
        if not conflicted:
            before = (root / BASE).read_text()
            generate(root)
            assert (root / BASE).read_text() == before
