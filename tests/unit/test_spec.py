"""Spec validation: every rule is one line naming file, service and field; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpcgen.generator.errors import SpecError
from rpcgen.generator.spec import HealthSpec
from rpcgen.generator.spec_check import parse_spec
from rpcgen.generator.spec_file import add_service, load_spec
from tests.support.project import cli, snapshot, write

GOOD = """\
schema_version = 1
package = "services"

[services.PriceFetcher]
port = 50001

[services.PriceFetcher.health]
interval_s = 30
"""


def test_valid_spec_and_defaults(tmp_path: Path) -> None:
    write(tmp_path, "rpcgen.toml", GOOD)
    spec = load_spec(tmp_path)
    (svc,) = spec.services
    assert (svc.name, svc.port, svc.snake) == ("PriceFetcher", 50001, "price_fetcher")
    assert svc.server_module == "services.price_fetcher_server"
    assert svc.server_class == "PriceFetcherServer"
    assert svc.health == HealthSpec(True, 30.0, 3, True)
    assert (spec.tests_dir, spec.host) == ("tests", "127.0.0.1")


def _errors(body: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(__import__("tomlkit").parse(body).unwrap(), "rpcgen.toml")
    return info.value.lines()


def _svc(name: str = "Foo", extra: str = "", port: str = "50001") -> str:
    return f"schema_version = 1\n[services.{name}]\nport = {port}\n{extra}\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            _svc('"123bad"'),
            "rpcgen.toml: service '123bad': name: name must be a CapWords identifier",
        ),
        (_svc('"my-service"'), "service 'my-service': name: name must be a CapWords"),
        (_svc("class"), "service 'class': name: name must be a CapWords"),
        (_svc("lowercase"), "service 'lowercase': name: name must be a CapWords"),
        (_svc("Json"), "service Json: name: name clashes with the standard library module 'json'"),
        (_svc(port="80"), "service Foo: port: must be an integer from 1024 to 65535, got 80"),
        (_svc(port="70000"), "service Foo: port: must be an integer from 1024 to 65535, got 70000"),
        (_svc(port="true"), "service Foo: port: must be an integer from 1024 to 65535, got True"),
        (_svc(port='"50001"'), "service Foo: port: must be an integer"),
        ("schema_version = 1\n[services.Foo]\n", "service Foo: port: missing"),
        (
            _svc(extra='server_module = "services..x"'),
            "service Foo: server_module: must be a dotted",
        ),
        (_svc(extra='server_module = "1abc.mod"'), "service Foo: server_module: must be a dotted"),
        (_svc(extra='server_class = "not a class"'), "service Foo: server_class: must be a class"),
        (_svc(extra="start_timeout_s = 0"), "service Foo: start_timeout_s: must be a positive"),
        (
            _svc(extra="[services.Foo.health]\ninterval_s = 0"),
            "service Foo: health.interval_s: must be a positive",
        ),
        (
            _svc(extra="[services.Foo.health]\nmax_consecutive_failures = -1"),
            "service Foo: health.max_consecutive_failures: must be a positive integer",
        ),
        (
            _svc(extra="[services.Foo.health]\nmax_consecutive_failures = 1.5"),
            "health.max_consecutive_failures: must be a positive integer",
        ),
        (_svc(extra="[services.Foo.health]\nenabled = 1"), "health.enabled: must be true or false"),
        (_svc(extra="prot = 1"), "service Foo: prot: unknown key; did you mean 'port'?"),
        (
            _svc(extra="[services.Foo.health]\nintervl_s = 5"),
            "health.intervl_s: unknown key; did you mean 'interval_s'?",
        ),
        (
            'schema_version = 1\npakage = "x"\n',
            "rpcgen.toml: pakage: unknown key; did you mean 'package'?",
        ),
        (
            "[services.Foo]\nport = 50001\n",
            "rpcgen.toml: schema_version: missing; add schema_version = 1",
        ),
        ("schema_version = 2\n", "schema_version: must be 1, got 2"),
        (
            'schema_version = 1\npackage = "my-pkg"\n',
            "rpcgen.toml: package: must be a dotted module path",
        ),
        (
            'schema_version = 1\ntests_dir = "../out"\n',
            "rpcgen.toml: tests_dir: must be a relative folder",
        ),
        (_svc(extra='depends_on = ["Nope"]'), "service Foo: depends_on: unknown service 'Nope'"),
    ],
)
def test_each_rule_is_one_line_naming_file_service_and_field(body: str, expected: str) -> None:
    lines = _errors(body)
    assert len(lines) == 1, lines
    assert expected in lines[0]
    assert "\n" not in lines[0]


def test_clashes_between_services() -> None:
    body = (
        "schema_version = 1\n"
        "[services.HttpServer]\nport = 50001\n"
        "[services.HTTPServer]\nport = 50001\n"
    )
    lines = _errors(body)
    assert any(
        "service HTTPServer: port: port 50001 is also used by HttpServer" in x for x in lines
    )
    assert any(
        "name clashes with HttpServer (both become module 'http_server')" in x for x in lines
    )


def test_generated_module_names_may_not_collide() -> None:
    lines = _errors(
        "schema_version = 1\n[services.Foo]\nport = 50001\n[services.FooBase]\nport = 50002\n"
    )
    assert any(
        "module 'services.foo_base' would be written for both Foo and FooBase" in x for x in lines
    )


def test_a_service_with_errors_is_not_also_reported_as_unknown_to_its_dependents() -> None:
    # Issue 21: a typo `prot = 50111` used to add "depends_on: unknown service 'DocIndex'".
    errors = _errors(
        'schema_version = 1\npackage = "services"\n'
        "[services.DocIndex]\nprot = 50111\n"
        '[services.Summarizer]\nport = 50112\ndepends_on = ["DocIndex"]\n'
    )
    assert errors == [
        "rpcgen.toml: service DocIndex: prot: unknown key; did you mean 'port'?",
        "rpcgen.toml: service DocIndex: port: missing; every service needs a port",
    ]


def test_dependency_cycle() -> None:
    body = (
        "schema_version = 1\n"
        '[services.A]\nport = 50001\ndepends_on = ["B"]\n'
        '[services.B]\nport = 50002\ndepends_on = ["A"]\n'
    )
    (line,) = _errors(body)
    assert "depends_on: dependency cycle: A -> B -> A" in line


def test_every_problem_is_reported_at_once() -> None:
    body = "[services.Foo]\nport = 1\nprot = 2\n[services.Foo.health]\ninterval_s = -1\n"
    assert len(_errors(body)) == 4


BAD_FILES = {
    "malformed TOML": (
        "rpcgen.toml",
        "schema_version = 1\n[services.Foo\nport = 1\n",
        "rpcgen.toml:2:",
    ),
    "bad port": ("rpcgen.toml", _svc(port="80"), "service Foo: port"),
    "bad name": ("rpcgen.toml", _svc('"my-service"'), "service 'my-service'"),
    "unknown key": ("rpcgen.toml", _svc(extra="prot = 1"), "did you mean 'port'?"),
    "pyproject": (
        "pyproject.toml",
        '[project]\nname = "x"\n[tool.rpcgen]\nschema_version = 1\n'
        "[tool.rpcgen.services.Foo]\nport = 5\n",
        "pyproject.toml [tool.rpcgen]: service Foo: port",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
@pytest.mark.parametrize(
    "command", [["generate"], ["generate", "--check"], ["list"], ["new", "Bar"]]
)
def test_cli_bad_spec_exits_2_with_one_line_per_problem_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, command: list[str]
) -> None:
    name, body, expected = BAD_FILES[case]
    write(tmp_path, name, body)
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, tmp_path, *command)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rpcgen: error: ") and expected in lines[0]
    assert "Traceback" not in out + err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["123bad", "my-service", "class", "lower", "Json", "None"])
def test_cli_new_rejects_bad_names_without_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, _, err = cli(capsys, tmp_path, "new", name)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == {}


def test_both_spec_locations_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "rpcgen.toml", "schema_version = 1\n")
    write(tmp_path, "pyproject.toml", "[tool.rpcgen]\nschema_version = 1\n")
    with pytest.raises(SpecError, match=r"both here and in pyproject\.toml"):
        load_spec(tmp_path)


def test_add_service_picks_the_next_port_and_keeps_comments(tmp_path: Path) -> None:
    write(
        tmp_path,
        "rpcgen.toml",
        "# my services\nschema_version = 1  # keep me\n\n" + GOOD.split("\n", 1)[1],
    )
    added = add_service(tmp_path, "OrderBook")
    assert added.port_chosen and added.service.port >= 50002
    assert "# my services" in added.text and "# keep me" in added.text
    assert added.text.index("PriceFetcher") < added.text.index("OrderBook")
    with pytest.raises(SpecError, match="already exists"):
        add_service(tmp_path, "PriceFetcher")
