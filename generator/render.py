"""Render a spec into files: jinja2 templates (StrictUndefined) -> black -> outputs table.

Output is deterministic: no timestamps, no absolute paths, sorted iteration; the
same spec and server modules give byte-identical files. Black runs in-process
with the project's own ``[tool.black]`` mode, the one ``black --check`` uses.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from .errors import ServerModuleError, SpecError, SpecIssue
from .imports import import_lines
from .introspect import Import, ServerInterface, module_file, read_server_interface
from .spec import DEFAULT_MAX_CONCURRENT_CALLS, ProjectSpec, RaySpec, ServiceSpec

__all__ = ["TEMPLATE_VERSION", "Output", "Rendered", "black_mode", "render_project"]

#: Bump when templates change in a way that changes output.
TEMPLATE_VERSION = 3  # 2: the asyncio view, async tests, max_concurrent_calls; 3: backend

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
    kind: str  # base | client | server | test | package | registry | conftest
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
    #: services not rendered this time (their server module has an error): their files
    #: and lock entries stay as they are
    held: frozenset[str] = frozenset()


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
    env.filters["docstring"] = docstring_body
    env.filters["py"] = py_literal
    return env


_LITERAL_TYPES = (bool, int, str)


def py_literal(value: Any) -> str:
    """A spec value as Python source: ``repr()`` of a validated type, never raw text.

    Only bool, int, finite float, str and tuples/lists of them are accepted, so no
    value from a spec (or a hand-edited lock) can ever become code.
    """
    if type(value) in _LITERAL_TYPES:
        return repr(value)
    if type(value) is float and math.isfinite(value):
        return repr(value)
    if type(value) in (tuple, list):
        return repr(tuple(ast.literal_eval(py_literal(item)) for item in value))
    if type(value) is dict and all(type(key) is str for key in value):
        return repr({key: ast.literal_eval(py_literal(item)) for key, item in value.items()})
    raise TypeError(f"refusing to render {type(value).__name__} {value!r} into generated code")


def docstring_body(text: str) -> str:
    """``text`` as the inside of a triple-quoted docstring that means exactly ``text``.

    Backslashes and unprintable characters are escaped, and so is every quote that
    could close the string early: one followed by another quote, or the last one.
    """
    out: list[str] = []
    for index, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            closing = index == len(text) - 1 or text[index + 1] == '"'
            out.append('\\"' if closing else ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def black_mode(root: Path) -> Any:
    """The black Mode that ``black --check`` would use in ``root`` ([tool.black]).

    A bad ``[tool.black]`` value is a one-line SpecError naming it, as black's own
    check would refuse it too.
    """
    import black

    from .spec_file import read_spec_text

    config: Any = {}
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        import tomlkit

        try:
            data = tomlkit.parse(read_spec_text(pyproject).text).unwrap()
        except SpecError:
            raise
        except Exception:
            data = {}  # malformed TOML: reported by the spec's own reading when it matters
        tool = data.get("tool", {})
        config = tool.get("black", {}) if isinstance(tool, dict) else {}
    from black.const import DEFAULT_LINE_LENGTH
    from black.mode import TargetVersion

    def bad(key: str, value: Any, want: str) -> SpecError:
        return SpecError(
            [SpecIssue("pyproject.toml [tool.black]", f"{key} must be {want}, got {value!r}")]
        )

    if not isinstance(config, dict):
        raise bad("the table", config, "a table")
    versions = config.get("target-version", config.get("target_version", []))
    known = {v.name.lower() for v in TargetVersion}
    if not isinstance(versions, list) or not all(
        isinstance(v, str) and v.lower() in known for v in versions
    ):
        raise bad("target-version", versions, f"a list of {', '.join(sorted(known))}")
    line_length = config.get("line-length", config.get("line_length", DEFAULT_LINE_LENGTH))
    if type(line_length) is not int or not 1 <= line_length <= 10_000:
        raise bad("line-length", line_length, "a whole number from 1 to 10000")
    flags = {}
    for key in ("skip-string-normalization", "skip-magic-trailing-comma", "preview"):
        value = config.get(key, False)
        if not isinstance(value, bool):
            raise bad(key, value, "true or false")
        flags[key] = value
    return black.Mode(
        target_versions={TargetVersion[v.upper()] for v in versions},
        line_length=line_length,
        string_normalization=not flags["skip-string-normalization"],
        magic_trailing_comma=not flags["skip-magic-trailing-comma"],
        preview=flags["preview"],
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
    root: Path,
    spec: ProjectSpec,
    *,
    read: Callable[[Path], str | None] | None = None,
    tolerate: frozenset[str] = frozenset(),
) -> Rendered:
    """Render every service of ``spec``. Reads server modules; writes nothing.

    A service in ``tolerate`` whose server module has an error is held (left as it is,
    with a note) instead of failing the run: ``rpcgen new`` adds a service beside one
    that someone is still fixing.
    """
    held: set[str] = set()
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

    conftest = env.get_template("conftest.py.jinja").render(package=spec.package)
    outputs.append(Output("conftest.py", conftest, "user", None, "conftest", mode))

    for init in sorted(_package_inits(root, spec.package)):
        text = env.get_template("package_init.py.jinja").render(
            package=init.rsplit("/", 2)[0].replace("/", ".")
        )
        outputs.append(Output(init, text, "user", None, "package", mode))

    for svc, server_rel, existing in per_service:
        skeleton = Output(
            server_rel,
            env.get_template("server.py.jinja").render(
                svc=svc,
                server_class=svc.server_class,
                package=spec.package,
                deps=[spec.service(name) for name in svc.depends_on],
            ),
            "user",
            svc.name,
            "server",
            mode,
        )
        server_text = existing if existing is not None else skeleton.text
        outputs.append(skeleton)
        try:
            interface = read_server_interface(
                server_text,
                module=svc.server_module,
                class_name=svc.server_class,
                path=server_rel,
                service=svc.name,
                is_package=server_rel.endswith("__init__.py"),
            )
        except ServerModuleError as exc:
            if svc.name not in tolerate:
                raise
            held.add(svc.name)
            notes.append(f"{svc.name} left as it was (fix it, then run `rpcgen generate`): {exc}")
            continue
        notes.extend(interface.notes)
        outputs.extend(_render_service(env, mode, spec, svc, interface, first_party))
    outputs.append(_render_registry(env, mode, spec, first_party))
    unique: dict[str, Output] = {}
    for out in outputs:
        unique.setdefault(out.path, out)
    return Rendered(
        tuple(sorted(unique.values(), key=lambda o: o.path)),
        tuple(notes),
        _black_version(),
        frozenset(held),
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
        return path.read_text(encoding="utf-8-sig")  # Python accepts a BOM: so do we
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerModuleError(path=str(path), service="?", reason=f"cannot read: {exc}") from exc


def _ray_options(ray: RaySpec | None) -> list[str]:
    """``RayOptions(...)``'s keyword arguments (those not at their default), as source."""
    if ray is None:
        return []
    defaults = RaySpec()
    args = []
    for key in ("namespace", "num_cpus", "num_gpus", "max_concurrency", "max_restarts", "detached"):
        value = getattr(ray, key)
        if value != getattr(defaults, key):
            args.append(f"{key}={py_literal(value)}")
    if ray.resources:
        args.append(f"resources={py_literal(dict(ray.resources))}")
    return args


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
        Import("rpcgen.runtime", "AsyncView"),
        Import("rpcgen.runtime", "ReadySignal"),
        Import("rpcgen.runtime", "RPCServiceBase"),
        Import("rpcgen.runtime", "serve_rpc"),
        *interface.runtime_imports,
    }
    if svc.ray is not None:
        runtime.add(Import("rpcgen.runtime", "RayOptions"))
    bound = {imp.bound for imp in runtime}
    deps = [spec.service(name) for name in svc.depends_on]
    typing_only = {Import(svc.server_module, svc.server_class)}
    typing_only |= {Import(f"{spec.package}.{dep.snake}", dep.name) for dep in deps}
    typing_only |= {imp for imp in interface.typing_imports if imp.bound not in bound}
    taken = {imp.bound for imp in runtime | typing_only}
    clashes = [own for own in (f"{svc.name}Aio", f"{svc.name}Base") if own in taken]
    if clashes:
        raise SpecError(
            [
                SpecIssue(
                    spec.source,
                    f"the generated class {own} would shadow the imported name {own} (a "
                    "dependency, the server class, or a type its methods use); rename one",
                    service=svc.name,
                )
                for own in clashes
            ]
        )
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
        "streams": [m for m in interface.methods if m.stream],
        "idempotent": [m for m in interface.methods if m.idempotent],
        "imports": "\n".join(import_lines(runtime, first_party)),
        "typing_imports": [line for line in import_lines(typing_only, first_party)],
        "package": spec.package,
        "deps": deps,
        # the dependencies the server's __init__ asks for (by their snake-case names)
        "server_deps": [dep for dep in deps if dep.snake in interface.init_params],
        "default_max_concurrent_calls": DEFAULT_MAX_CONCURRENT_CALLS,
        "ray_options": _ray_options(svc.ray),
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
