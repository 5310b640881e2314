"""Spec checks for the asyncio work: ``max_concurrent_calls``, and generated class names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rpcgen.generator.api import generate
from rpcgen.generator.errors import SpecError
from rpcgen.generator.spec_file import load_spec
from tests.support.project import write

SPEC = """\
schema_version = 1

[services.Pricer]
port = 50111
{extra}
"""

SERVER = """\
class PricerServer:
    def health_check_rpc(self) -> dict[str, str]:
        return {"status": "ok"}
"""


@pytest.mark.parametrize("value", ["0", "-1", "1025", "true", '"8"', "2.5"])
def test_bad_values_are_refused_in_one_line(tmp_path: Path, value: str) -> None:
    write(tmp_path, "rpcgen.toml", SPEC.format(extra=f"max_concurrent_calls = {value}"))
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    assert "max_concurrent_calls" in str(info.value)
    assert "must be an integer from 1 to 1024" in str(info.value)


def test_a_set_limit_reaches_the_server_entrypoint(tmp_path: Path) -> None:
    write(tmp_path, "rpcgen.toml", SPEC.format(extra="max_concurrent_calls = 8"))
    write(tmp_path, "services/__init__.py", "")
    write(tmp_path, "services/pricer_server.py", SERVER)
    generate(tmp_path)
    assert serve_rpc_keywords(tmp_path) == {"max_concurrent_calls": 8}


def serve_rpc_keywords(root: Path) -> dict[str, object]:
    text = (root / "services/pricer_base.py").read_text()
    calls = [
        node
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "serve_rpc"
    ]
    assert len(calls) == 1
    keywords = {
        str(k.arg): ast.literal_eval(k.value) for k in calls[0].keywords if k.arg != "service_name"
    }
    return keywords


def test_the_default_renders_no_keyword(tmp_path: Path) -> None:
    write(tmp_path, "rpcgen.toml", SPEC.format(extra=""))
    write(tmp_path, "services/__init__.py", "")
    write(tmp_path, "services/pricer_server.py", SERVER)
    generate(tmp_path)
    assert serve_rpc_keywords(tmp_path) == {}


CLASH = """\
schema_version = 1

[services.Pricer]
port = 50111
depends_on = ["PricerAio"]

[services.PricerAio]
port = 50112
"""


def test_a_generated_class_may_not_shadow_an_imported_name(tmp_path: Path) -> None:
    write(tmp_path, "rpcgen.toml", CLASH)
    write(tmp_path, "services/__init__.py", "")
    write(tmp_path, "services/pricer_server.py", SERVER)
    write(tmp_path, "services/pricer_aio_server.py", SERVER.replace("Pricer", "PricerAio"))
    with pytest.raises(SpecError) as info:
        generate(tmp_path)
    assert str(info.value).count("\n") == 0
    assert "service Pricer" in str(info.value) or "Pricer:" in str(info.value)
    assert "PricerAio would shadow" in str(info.value)
    assert not (tmp_path / "services/pricer_base.py").exists()
