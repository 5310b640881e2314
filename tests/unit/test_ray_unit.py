"""The Ray backend's settings, checked without Ray: spec keys, RayOptions, the
constructor's backend checks, rendering, and direct mode."""

from __future__ import annotations

import ast
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from rpcgen.generator.api import generate
from rpcgen.generator.errors import SpecError
from rpcgen.generator.render import py_literal
from rpcgen.generator.spec import RaySpec
from rpcgen.generator.spec_file import load_spec
from rpcgen.runtime import RayOptions, ServiceError
from rpcgen.runtime.ray_backend import RayBackend
from rpcgen.runtime.settings import ServiceSettings, check_backend
from tests.support.project import write
from tests.support.services import Echo

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

    def price_rpc(self, symbol: str) -> float:
        return 1.0
"""


def spec_error(tmp_path: Path, extra: str) -> str:
    write(tmp_path, "rpcgen.toml", SPEC.format(extra=extra))
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    return str(info.value)


def test_a_ray_service_spec(tmp_path: Path) -> None:
    write(
        tmp_path,
        "rpcgen.toml",
        SPEC.format(
            extra='backend = "ray"\n\n[services.Pricer.ray]\naddress = "10.0.0.5:6379"\n'
            'namespace = "prod"\nnum_cpus = 2\nnum_gpus = 0.5\nresources = { node_b = 1 }\n'
            "max_concurrency = 4\nmax_restarts = 3\ndetached = true\n"
        ),
    )
    svc = load_spec(tmp_path).service("Pricer")
    assert svc.backend == "ray"
    assert svc.ray == RaySpec(
        address="10.0.0.5:6379",
        namespace="prod",
        num_cpus=2.0,
        num_gpus=0.5,
        resources=(("node_b", 1.0),),
        max_concurrency=4,
        max_restarts=3,
        detached=True,
    )


def test_backend_ray_without_a_table_takes_the_defaults(tmp_path: Path) -> None:
    write(tmp_path, "rpcgen.toml", SPEC.format(extra='backend = "ray"'))
    assert load_spec(tmp_path).service("Pricer").ray == RaySpec()


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ('backend = "grpc"', "backend", "must be one of 'process', 'ray', got 'grpc'"),
        ("backend = 1", "backend", "must be one of"),
        ("[services.Pricer.ray]\nnum_cpus = 1", "ray", 'apply only to backend = "ray"'),
        (
            'backend = "ray"\nmax_concurrent_calls = 8',
            "max_concurrent_calls",
            'applies only to backend = "process"',
        ),
        ('backend = "ray"\nray = 3', "ray", "must be a table"),
        ('backend = "ray"\n[services.Pricer.ray]\nnum_cpu = 1', "ray.num_cpu", "'num_cpus'"),
        ('backend = "ray"\n[services.Pricer.ray]\nnum_cpus = -1', "ray.num_cpus", ">= 0"),
        ('backend = "ray"\n[services.Pricer.ray]\nnum_gpus = "1"', "ray.num_gpus", ">= 0"),
        ('backend = "ray"\n[services.Pricer.ray]\nnum_cpus = nan', "ray.num_cpus", ">= 0"),
        ('backend = "ray"\n[services.Pricer.ray]\nresources = { a = "x" }', "ray.resources", ""),
        ('backend = "ray"\n[services.Pricer.ray]\nresources = [1]', "ray.resources", ""),
        ('backend = "ray"\n[services.Pricer.ray]\nmax_concurrency = 0', "ray.max_concurrency", ""),
        ('backend = "ray"\n[services.Pricer.ray]\nmax_restarts = -2', "ray.max_restarts", ""),
        ('backend = "ray"\n[services.Pricer.ray]\ndetached = "yes"', "ray.detached", ""),
        ('backend = "ray"\n[services.Pricer.ray]\nnamespace = " "', "ray.namespace", ""),
        ('backend = "ray"\n[services.Pricer.ray]\naddress = 7', "ray.address", ""),
    ],
)
def test_bad_backend_settings_are_one_line_each(
    tmp_path: Path, extra: str, field: str, message: str
) -> None:
    text = spec_error(tmp_path, extra)
    line = next(line for line in text.splitlines() if f"{field}:" in line or f"{field} " in line)
    assert message in line, text


def test_ray_options_refuse_bad_values() -> None:
    for bad in (
        {"namespace": ""},
        {"num_cpus": -1},
        {"num_gpus": float("inf")},
        {"resources": {"": 1}},
        {"resources": {"a": -1}},
        {"max_concurrency": 0},
        {"max_concurrency": True},
        {"max_restarts": -2},
        {"detached": "no"},
    ):
        with pytest.raises(ValueError, match=r"^RayOptions: "):
            RayOptions(**bad)


def test_ray_options_become_actor_options() -> None:
    options = RayOptions(
        namespace="prod", num_cpus=1, resources={"node_b": 1}, max_concurrency=4, detached=True
    ).actor_options()
    assert options == {
        "namespace": "prod",
        "max_restarts": -1,
        "max_task_retries": 0,
        "max_concurrency": 4,
        "num_cpus": 1,
        "resources": {"node_b": 1},
        "lifetime": "detached",
    }
    assert "lifetime" not in RayOptions().actor_options()


def test_the_constructor_checks_settings_against_the_backend() -> None:
    def make(**kwargs: Any) -> Echo:
        return Echo(1, running_unit_tests=True, **kwargs)

    with pytest.raises(ValueError, match="backend must be one of 'process', 'ray', got 'rey'"):
        make(backend="rey")
    with pytest.raises(ValueError, match="ray_address apply only to backend='ray'"):
        make(ray_address="auto")
    with pytest.raises(ValueError, match="ray_options apply only to backend='ray'"):
        make(ray_options=RayOptions())
    with pytest.raises(ValueError, match="transport apply only to backend='process'"):
        make(backend="ray", transport="unix")
    with pytest.raises(ValueError, match="max_concurrent_calls apply only"):
        make(backend="ray", max_concurrent_calls=4)
    with pytest.raises(ValueError, match="ray_address must be a non-empty string"):
        check_backend("S", "ray", ray_address="", ray_options=None, process_only={})


def test_direct_mode_needs_no_ray() -> None:
    had_ray = "ray" in sys.modules
    client = Echo(1, running_unit_tests=True, backend="ray")
    try:
        assert client.add(2, 3) == 5
        assert client.ray_options == RayOptions()
        if not had_ray:
            assert "ray" not in sys.modules
    finally:
        client.shutdown()


def test_a_ray_service_has_no_rpcgen_key_to_rotate() -> None:
    backend = RayBackend(
        ServiceSettings(service="Echo", port=1, backend="ray", ray_options=RayOptions()),
        make_server=dict,
        notify=lambda message, level: None,
        log=logging.getLogger("test.ray"),
    )
    with pytest.raises(ServiceError, match="Ray's own token"):
        backend.rotate_key()
    assert backend.label == "ray:rpcgen/Echo"


def test_dict_literals_render_as_repr_of_validated_values() -> None:
    key = "x\"}); import os; os.system('boom')  # "
    text = py_literal({key: 1.0, "b": 2})
    assert ast.literal_eval(text) == {key: 1.0, "b": 2}
    with pytest.raises(TypeError):
        py_literal({1: 2})
    with pytest.raises(TypeError):
        py_literal({"a": object()})


def test_a_ray_service_renders_its_options_as_literals(tmp_path: Path) -> None:
    hostile = "n\"ode'); import os  #"
    write(
        tmp_path,
        "rpcgen.toml",
        SPEC.format(
            extra='backend = "ray"\n\n[services.Pricer.ray]\naddress = "auto\\n# x"\n'
            f"num_cpus = 1\nresources = {{ {json.dumps(hostile)} = 1 }}\nmax_restarts = 0\n"
        ),
    )
    write(tmp_path, "services/__init__.py", "")
    write(tmp_path, "services/pricer_server.py", SERVER)
    generate(tmp_path)
    text = (tmp_path / "services/pricer_base.py").read_text()
    tree = ast.parse(text)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PricerBase")
    values = {
        t.id: n.value
        for n in cls.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    assert ast.literal_eval(values["rpc_backend"]) == "ray"
    assert ast.literal_eval(values["rpc_ray_address"]) == "auto\n# x"
    call = values["rpc_ray_options"]
    assert isinstance(call, ast.Call) and ast.unparse(call.func) == "RayOptions"
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert keywords == {"num_cpus": 1.0, "max_restarts": 0, "resources": {hostile: 1.0}}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "os" not in imported


def test_switching_the_backend_back_regenerates_cleanly(tmp_path: Path) -> None:
    write(tmp_path, "services/__init__.py", "")
    write(tmp_path, "services/pricer_server.py", SERVER)
    write(tmp_path, "rpcgen.toml", SPEC.format(extra=""))
    generate(tmp_path)
    process_text = (tmp_path / "services/pricer_base.py").read_text()
    write(tmp_path, "rpcgen.toml", SPEC.format(extra='backend = "ray"'))
    generate(tmp_path)
    ray_text = (tmp_path / "services/pricer_base.py").read_text()
    assert 'rpc_backend = "ray"' in ray_text and "RayOptions()" in ray_text
    write(tmp_path, "rpcgen.toml", SPEC.format(extra=""))
    generate(tmp_path)
    assert (tmp_path / "services/pricer_base.py").read_text() == process_text
