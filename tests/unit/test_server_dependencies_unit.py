"""How a server asks for the services it uses: ``__init__`` parameters named after them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rpcgen.generator.introspect import read_server_interface
from rpcgen.generator.render import render_project
from rpcgen.generator.spec import ProjectSpec, ServiceSpec
from rpcgen.runtime import ServiceNotFound
from rpcgen.runtime.directory import proc_stat, wait_for_entry

SERVER = """
class SummarizerServer:
    def __init__(self, doc_index, *, cache_size: int = 8) -> None:
        self.doc_index = doc_index

    def summarize_rpc(self, doc_id: str) -> str:
        return doc_id
"""


def interface(source: str) -> tuple[str, ...]:
    return read_server_interface(
        source, module="s", class_name="SummarizerServer", path="s.py", service="Summarizer"
    ).init_params


@pytest.mark.parametrize(
    ("init", "expected"),
    [
        ("def __init__(self, doc_index, *, cache_size=8): pass", ("doc_index", "cache_size")),
        ("def __init__(self, /, doc_index): pass", ("doc_index",)),
        ("def __init__(self, doc_index, /, other): pass", ("other",)),  # positional-only: no
        ("def __init__(self, *args, **kwargs): pass", ()),  # named explicitly, or not at all
        ("pass", ()),
    ],
)
def test_init_parameters_a_caller_can_name(init: str, expected: tuple[str, ...]) -> None:
    assert interface(f"class SummarizerServer:\n    {init}\n") == expected


def test_an_inherited_init_counts() -> None:
    source = (
        "class Base:\n    def __init__(self, doc_index): pass\nclass SummarizerServer(Base): pass\n"
    )
    assert interface(source) == ("doc_index",)


def render(tmp_path: Path, server: str) -> str:
    (tmp_path / "services").mkdir()
    (tmp_path / "services/summarizer_server.py").write_text(server)
    (tmp_path / "services/doc_index_server.py").write_text("class DocIndexServer:\n    pass\n")
    spec = ProjectSpec(
        services=(
            ServiceSpec("DocIndex", 50010, "services.doc_index_server", "DocIndexServer"),
            ServiceSpec(
                "Summarizer",
                50011,
                "services.summarizer_server",
                "SummarizerServer",
                depends_on=("DocIndex",),
            ),
        )
    )
    outputs = {o.path: o for o in render_project(tmp_path, spec).outputs}
    return outputs["services/summarizer_base.py"].text


def _calls_of(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
    ]


def test_a_server_that_names_its_dependency_gets_it_everywhere(tmp_path: Path) -> None:
    text = render(tmp_path, SERVER)
    tree = ast.parse(text)
    [direct] = _calls_of(tree, "SummarizerServer")
    assert [k.arg for k in direct.keywords] == ["doc_index"]  # direct mode
    [serve] = _calls_of(tree, "serve_rpc")
    kwargs = {k.arg: k.value for k in serve.keywords}
    assert isinstance(kwargs["server_kwargs"], ast.Dict)  # RPC mode: in its server process
    serve_fn = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "serve_summarizer"
    )
    assert [a.arg for a in serve_fn.args.args] == [
        "address",
        "authkey",
        "server_ready",
        "doc_index",
    ]
    assert 'rpc_server_dependencies = ("doc_index",)' in text  # a Ray actor's server too


def test_a_server_that_does_not_name_it_is_built_as_before(tmp_path: Path) -> None:
    text = render(tmp_path, SERVER.replace("doc_index, *,", "*,"))
    tree = ast.parse(text)
    [direct] = _calls_of(tree, "SummarizerServer")
    assert direct.keywords == []
    assert "server_kwargs" not in text and "rpc_server_dependencies" not in text
    # its client still gets DocIndex's client, as before
    assert "doc_index: DocIndex," in text


def test_attach_by_name_with_two_running_names_them_and_asks_for_a_port(tmp_path: Path) -> None:
    import json
    import os

    me = os.getpid()
    stat = proc_stat(me)
    assert stat is not None
    for port in (50001, 50002):  # two live entries (this process stands in for both)
        entry = {
            "service": "DocIndex",
            "host": "127.0.0.1",
            "port": port,
            "address": ["127.0.0.1", port],
            "pid": me,
            "create_time": 0.0,
            "start_ticks": stat[1],
            "owner_pid": me,
            "generation": 1,
            "key_file": "k",
        }
        (tmp_path / f"DocIndex-{port}.json").write_text(json.dumps(entry))
    with pytest.raises(ServiceNotFound) as caught:
        wait_for_entry(port=None, service="DocIndex", timeout_s=60.0, folder=tmp_path)
    assert caught.value.found == ((50001, me), (50002, me))
    assert str(caught.value) == (
        f"2 services named 'DocIndex' run here: port 50001 (owner pid {me}); "
        f"port 50002 (owner pid {me}); pass port= to choose one"
    )
