"""Render a spec into files: jinja2 templates (StrictUndefined) -> black -> outputs table.

Output is deterministic: no timestamps, no absolute paths, sorted iteration; the
same spec and server modules give byte-identical files. Black runs in-process
with the project's own ``[tool.black]`` mode, the one ``black --check`` uses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from .errors import ServerModuleError
from .imports import import_lines
from .introspect import Import, ServerInterface, module_file, read_server_interface
from .spec import ProjectSpec, ServiceSpec

__all__ = ["TEMPLATE_VERSION", "Output", "Rendered", "black_mode", "render_project"]

#: Bump when templates change in a way that changes output.
TEMPLATE_VERSION = 1

Owner = Literal["rpcgen", "user"]


@dataclass(frozen=True)
class Output:
    """One file rpcgen renders: where, what, who owns it.

    ``raw`` is the template's output; ``text`` is that, formatted by black. It is
    formatted on first use only: a user-owned file that exists is never written,
    so it need not be formatted at all (black is most of a run's time).
    """

    path: str  # posix, relative to the project root
    raw: str
    owner: Owner
    service: str | None
    kind: str  # base | client | server | test | package
    mode: Any = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        return _format(self.raw, self.mode) if self.mode is not None else self.raw

    @property
    def render_key(self) -> str:
        """Identifies ``text`` without computing it: same raw text, black and mode."""
        data = "\0".join([self.raw, _mode_key(self.mode), _black_version()])
        return hashlib.sha256(data.encode("utf-8")).hexdigest()


@cache
def _black_version() -> str:
    from importlib.metadata import version

    return version("black")


def _mode_key(mode: Any) -> str:
    if mode is None:
        return "unformatted"
    targets = ",".join(sorted(v.name for v in mode.target_versions))
    return (
        f"{targets}|{mode.line_length}|{mode.string_normalization}|"
        f"{mode.magic_trailing_comma}|{mode.preview}"
    )


@dataclass(frozen=True)
class Rendered:
    outputs: tuple[Output, ...]
    notes: tuple[str, ...] = field(default=())
    black_version: str = ""


@cache
def _environment() -> Any:
    import jinja2

    folder = resources.files("rpcgen.templates")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["docstring"] = _docstring
    env.filters["pytuple"] = lambda items: repr(tuple(str(i) for i in items))
    return env


def _docstring(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def black_mode(root: Path) -> Any:
    """The black Mode that ``black --check`` would use in ``root`` ([tool.black])."""
    import black

    config: dict[str, Any] = {}
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        import tomlkit

        try:
            data = tomlkit.parse(pyproject.read_text(encoding="utf-8")).unwrap()
        except Exception:
            data = {}
        config = data.get("tool", {}).get("black", {}) or {}
    from black.const import DEFAULT_LINE_LENGTH
    from black.mode import TargetVersion

    versions = config.get("target-version", config.get("target_version", []))
    targets = {TargetVersion[v.upper()] for v in versions}
    line_length = config.get("line-length", config.get("line_length", DEFAULT_LINE_LENGTH))
    return black.Mode(
        target_versions=targets,
        line_length=int(line_length),
        string_normalization=not config.get("skip-string-normalization", False),
        magic_trailing_comma=not config.get("skip-magic-trailing-comma", False),
        preview=bool(config.get("preview", False)),
    )


@lru_cache(maxsize=512)
def _format(text: str, mode: Any) -> str:
    import black

    return str(black.format_str(text, mode=mode))


def _rel(root: Path, path: Path) -> str:
    return PurePosixPath(path.relative_to(root)).as_posix()


def _spec_hash(spec: ProjectSpec, svc: ServiceSpec, interface: ServerInterface) -> str:
    data = {
        "template": TEMPLATE_VERSION,
        "project": [spec.package, spec.host, spec.tests_dir],
        "service": asdict(svc),
        "interface": interface.fingerprint(),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _first_party(root: Path, planned: set[str]) -> Callable[[str], bool]:
    """ruff's rule: first party if the module's file or package exists in the project."""

    def check(module: str) -> bool:
        base = PurePosixPath(*module.split("."))
        candidates = {f"{base}.py", f"{base}/__init__.py"}
        if candidates & planned:
            return True
        return (root / f"{base}.py").is_file() or (root / base).is_dir()

    return check


def _package_inits(root: Path, package: str) -> list[str]:
    parts = package.split(".")
    return [f"{'/'.join(parts[: i + 1])}/__init__.py" for i in range(len(parts))]


def render_project(
    root: Path, spec: ProjectSpec, *, read: Callable[[Path], str | None] | None = None
) -> Rendered:
    """Render every service of ``spec``. Reads server modules; writes nothing."""
    reader = read or _read
    env = _environment()
    mode = black_mode(root)
    outputs: list[Output] = []
    notes: list[str] = []
    planned: set[str] = set()
    for init in _package_inits(root, spec.package):
        if not (root / init).exists():
            planned.add(init)
    per_service: list[tuple[ServiceSpec, str, str | None]] = []
    for svc in spec.services:
        server_path = module_file(root, svc.server_module)
        rel = _rel(root, server_path)
        existing = reader(server_path)
        per_service.append((svc, rel, existing))
        planned |= {
            f"{spec.package.replace('.', '/')}/registry.py",
            rel,
            f"{spec.package.replace('.', '/')}/{svc.snake}.py",
            f"{spec.package.replace('.', '/')}/{svc.snake}_base.py",
        }
    first_party = _first_party(root, planned)

    for init in sorted(_package_inits(root, spec.package)):
        text = env.get_template("package_init.py.jinja").render(
            package=init.rsplit("/", 2)[0].replace("/", ".")
        )
        outputs.append(Output(init, text, "user", None, "package", mode))

    for svc, server_rel, existing in per_service:
        skeleton = Output(
            server_rel,
            env.get_template("server.py.jinja").render(svc=svc, server_class=svc.server_class),
            "user",
            svc.name,
            "server",
            mode,
        )
        server_text = existing if existing is not None else skeleton.text
        outputs.append(skeleton)
        interface = read_server_interface(
            server_text,
            module=svc.server_module,
            class_name=svc.server_class,
            path=server_rel,
            service=svc.name,
            is_package=server_rel.endswith("__init__.py"),
        )
        notes.extend(interface.notes)
        outputs.extend(_render_service(env, mode, spec, svc, interface, first_party))
    outputs.append(_render_registry(env, mode, spec, first_party))
    unique: dict[str, Output] = {}
    for out in outputs:
        unique.setdefault(out.path, out)
    return Rendered(
        tuple(sorted(unique.values(), key=lambda o: o.path)), tuple(notes), _black_version()
    )


def _render_registry(
    env: Any, mode: Any, spec: ProjectSpec, first_party: Callable[[str], bool]
) -> Output:
    imports = {
        Import("__future__", "annotations"),
        Import("typing", "Any"),
        Import("rpcgen.runtime", "ServiceGraph"),
        Import("rpcgen.runtime", "ServiceNode"),
        Import("rpcgen.runtime", "StartedServices"),
        *(Import(f"{spec.package}.{svc.snake}", svc.name) for svc in spec.services),
    }
    digest = hashlib.sha256(
        json.dumps(
            {
                "template": TEMPLATE_VERSION,
                "package": spec.package,
                "services": [asdict(s) for s in spec.services],
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    text = env.get_template("registry.py.jinja").render(
        spec_source=spec.source,
        spec_hash=digest,
        imports="\n".join(import_lines(imports, first_party)),
        services=sorted(spec.services, key=lambda s: s.name),
    )
    path = f"{spec.package.replace('.', '/')}/registry.py"
    return Output(path, text, "rpcgen", None, "registry", mode)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerModuleError(path=str(path), service="?", reason=f"cannot read: {exc}") from exc


def _render_service(
    env: Any,
    mode: Any,
    spec: ProjectSpec,
    svc: ServiceSpec,
    interface: ServerInterface,
    first_party: Callable[[str], bool],
) -> list[Output]:
    package_dir = spec.package.replace(".", "/")
    client_path = f"{package_dir}/{svc.snake}.py"
    base_path = f"{package_dir}/{svc.snake}_base.py"
    test_path = f"{spec.tests_dir}/test_{svc.snake}.py"

    runtime = {
        Import("__future__", "annotations"),
        Import("multiprocessing.process", "BaseProcess"),
        Import("typing", "TYPE_CHECKING"),
        Import("typing", "Any"),
        Import("rpcgen.runtime", "Address"),
        Import("rpcgen.runtime", "ReadySignal"),
        Import("rpcgen.runtime", "RPCServiceBase"),
        Import("rpcgen.runtime", "serve_rpc"),
        *interface.runtime_imports,
    }
    bound = {imp.bound for imp in runtime}
    deps = [spec.service(name) for name in svc.depends_on]
    typing_only = {Import(svc.server_module, svc.server_class)}
    typing_only |= {Import(f"{spec.package}.{dep.snake}", dep.name) for dep in deps}
    typing_only |= {imp for imp in interface.typing_imports if imp.bound not in bound}
    context = {
        "svc": svc,
        "snake": svc.snake,
        "health": svc.health,
        "host": spec.host,
        "spec_source": spec.source,
        "spec_hash": _spec_hash(spec, svc, interface),
        "client_path": client_path,
        "server_module": svc.server_module,
        "server_class": svc.server_class,
        "methods": interface.methods,
        "imports": "\n".join(import_lines(runtime, first_party)),
        "typing_imports": [line for line in import_lines(typing_only, first_party)],
        "package": spec.package,
        "has_echo": any(m.client_name == "echo" for m in interface.methods),
        "deps": deps,
    }
    files = [
        (base_path, "service_base.py.jinja", "rpcgen", "base"),
        (client_path, "service.py.jinja", "user", "client"),
        (test_path, "test_service.py.jinja", "user", "test"),
    ]
    owners: dict[str, Owner] = {"rpcgen": "rpcgen", "user": "user"}
    return [
        Output(
            path, env.get_template(template).render(**context), owners[owner], svc.name, kind, mode
        )
        for path, template, owner, kind in files
    ]
