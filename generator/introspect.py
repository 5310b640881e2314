"""Read a server class's ``*_rpc`` methods from its source with :mod:`ast` (never imported).

For each method we copy the parameters, defaults, annotations and the first
docstring line, and work out which imports the generated client needs:

* every name an annotation uses is traced to its original import in the server
  module (relative imports resolved) and that import is copied, so the client
  never re-exports through the server module (mypy's no-implicit-reexport);
  names the server module defines itself are imported from it;
* annotations only need ``TYPE_CHECKING`` imports (generated files use
  ``from __future__ import annotations``), but defaults are evaluated at import
  time, so names in defaults get real imports, except literal constants of the
  server module, which are inlined;
* annotations are rewritten for generated code by :mod:`.annotations` (modern
  forms, bare generics filled in, implicit ``Optional`` written out).
"""

from __future__ import annotations

import ast
import builtins
import copy
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .annotations import (
    ABC_ALIASES,
    TYPING_MODULES,
    FillGenerics,
    Modernize,
    allows_none,
    root_names,
)
from .errors import ServerModuleError

__all__ = [
    "Import",
    "Param",
    "RpcMethod",
    "ServerInterface",
    "module_file",
    "read_server_interface",
    "reserved_client_names",
]

_BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True, order=True)
class Import:
    """``import module [as alias]`` (name is None) or ``from module import name [as alias]``."""

    module: str
    name: str | None = None
    alias: str | None = None

    @property
    def bound(self) -> str:
        if self.alias:
            return self.alias
        return self.name if self.name else self.module.split(".")[0]


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # posonly | regular | vararg | kwonly | varkw
    annotation: str
    default: str | None = None


@dataclass(frozen=True)
class RpcMethod:
    rpc_name: str
    client_name: str
    params: tuple[Param, ...]
    returns: str
    doc: str | None
    #: Some parameter or the return lacks an annotation in the server's source:
    #: mypy --strict rejects a typed call to it, so the client calls it through Any.
    untyped: bool = False
    #: A streaming method (a generator, or annotated as an iterator): ``returns`` is
    #: ``Iterator[item]`` and ``item`` the item type.
    stream: bool = False
    item: str | None = None
    #: ``async def``: the client calls it the same way; the server awaits it.
    is_async: bool = False
    #: Marked ``@idempotent``: the client tries it again across a restart.
    idempotent: bool = False

    def flags(self) -> list[str]:
        """What sets the method apart, for the fingerprint (empty for a plain one)."""
        return [
            name
            for name, on in (
                ("stream", self.stream),
                ("async", self.is_async),
                ("idempotent", self.idempotent),
            )
            if on
        ]

    @property
    def returns_none(self) -> bool:
        return self.returns == "None"

    def forward_args(self) -> str:
        parts: list[str] = []
        for p in self.params:
            if p.kind in ("posonly", "regular"):
                parts.append(p.name)
            elif p.kind == "vararg":
                parts.append(f"*{p.name}")
            elif p.kind == "kwonly":
                parts.append(f"{p.name}={p.name}")
            else:
                parts.append(f"**{p.name}")
        return ", ".join(parts)

    def signature(self) -> str:
        parts: list[str] = ["self"]
        posonly = [p for p in self.params if p.kind == "posonly"]
        for p in self.params:
            if p.kind == "vararg":
                parts.append(f"*{p.name}: {p.annotation}")
            elif p.kind == "varkw":
                parts.append(f"**{p.name}: {p.annotation}")
            else:
                if p.kind == "kwonly" and not any(x.startswith("*") for x in parts):
                    parts.append("*")
                text = f"{p.name}: {p.annotation}"
                parts.append(f"{text} = {p.default}" if p.default is not None else text)
            if posonly and p is posonly[-1]:
                parts.append("/")
        return ", ".join(parts)


@dataclass(frozen=True)
class ServerInterface:
    module: str
    class_name: str
    methods: tuple[RpcMethod, ...]
    #: Imports needed only by annotations (placed under ``if TYPE_CHECKING:``).
    typing_imports: tuple[Import, ...]
    #: Imports needed at run time (by default values).
    runtime_imports: tuple[Import, ...]
    notes: tuple[str, ...] = field(default=())
    #: The names ``__init__`` takes by keyword: a dependency's client is passed to
    #: the server under its snake-case name when the server asks for it this way.
    init_params: tuple[str, ...] = field(default=())

    def fingerprint(self) -> str:
        data = {
            "module": self.module,
            "class": self.class_name,
            "methods": [
                [
                    m.rpc_name,
                    m.client_name,
                    [list(vars_of(p)) for p in m.params],
                    m.returns,
                    m.doc,
                    m.untyped,
                    *m.flags(),
                ]
                for m in self.methods
            ],
        }
        if self.init_params:  # only then: the hash of a server without them stays as it was
            data["init"] = list(self.init_params)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def vars_of(p: Param) -> tuple[str, str, str, str | None]:
    return (p.name, p.kind, p.annotation, p.default)


def module_file(root: Path, module: str) -> Path:
    """Where ``module`` lives under the project root (a .py file, or a package)."""
    base = root.joinpath(*module.split("."))
    package = base / "__init__.py"
    return package if package.is_file() else base.with_suffix(".py")


_reserved: frozenset[str] | None = None


def reserved_client_names() -> frozenset[str]:
    """Names a generated client method must not take: RPCServiceBase's own attributes."""
    global _reserved
    if _reserved is None:
        from rpcgen.runtime import RPCServiceBase

        class _Probe(RPCServiceBase[object]):
            def _create_direct_server(self) -> object:
                return object()

            def _start_server_process(self, *args: object) -> object:  # type: ignore[override]
                raise NotImplementedError

        probe = _Probe("Probe", 50000)
        names = {n for n in dir(_Probe) if not n.startswith("_")}
        names |= {n for n in vars(probe) if not n.startswith("_")}
        _reserved = frozenset(names | {"health_check", "shutdown"})
    return _reserved


class _ModuleScope:
    """What the server module's top level binds: imports, definitions, literal constants."""

    def __init__(self, tree: ast.Module, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.imports: dict[str, Import] = {}
        self.defined: set[str] = set()
        self.literals: dict[str, ast.expr] = {}
        self._scan(tree.body)

    def _scan(self, body: Iterable[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    imp = Import(alias.name, None, alias.asname)
                    self.imports[imp.bound] = imp
            elif isinstance(node, ast.ImportFrom):
                base = self._absolute(node.module, node.level)
                for alias in node.names:
                    if alias.name != "*":
                        self.imports[alias.asname or alias.name] = Import(
                            base, alias.name, alias.asname
                        )
            elif isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                self.defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        self.defined.add(target.id)
                        if node.value is not None and _is_literal(node.value):
                            self.literals[target.id] = node.value
            elif isinstance(node, ast.If):  # e.g. `if TYPE_CHECKING:` blocks
                self._scan(node.body)
                self._scan(node.orelse)
            elif hasattr(ast, "TypeAlias") and isinstance(node, ast.TypeAlias):
                self.defined.add(node.name.id)

    def _absolute(self, module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        parts = self.package.split(".") if self.package else []
        if level > 1:
            parts = parts[: len(parts) - (level - 1)]
        return ".".join([*parts, module] if module else parts)

    def typing_name(self, node: ast.expr) -> str | None:
        """``Optional`` for ``Optional``/``typing.Optional`` when it comes from typing."""
        if isinstance(node, ast.Name):
            imp = self.imports.get(node.id)
            if imp and imp.name and imp.module in TYPING_MODULES:
                return imp.name
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            imp = self.imports.get(node.value.id)
            if imp and imp.name is None and imp.module in TYPING_MODULES:
                return node.attr
        return None


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


class _Collector:
    def __init__(self, scope: _ModuleScope, where: str) -> None:
        self.scope = scope
        self.where = where
        self.typing: set[Import] = set()
        self.runtime: set[Import] = set()
        self.notes: list[str] = []
        #: an implicit Optional was made explicit in the method being read
        self.widened = False

    def _resolve(self, name: str, runtime: bool, method: str) -> bool:
        """Record the import for ``name``; False if it cannot be resolved."""
        scope = self.scope
        target = self.runtime if runtime else self.typing
        if name in scope.imports:
            imp = scope.imports[name]
            if imp.name and imp.module in TYPING_MODULES:
                module = "collections.abc" if imp.name in ABC_ALIASES else "typing"
                imp = Import(module, imp.name, imp.alias)
            target.add(imp)
            return True
        if name in scope.defined:
            target.add(Import(scope.module, name))
            return True
        if name in _BUILTINS:
            return True
        if name in ABC_ALIASES:  # typing.Callable rewritten to a bare name
            target.add(Import("collections.abc", name))
            return True
        import typing

        if hasattr(typing, name):
            target.add(Import("typing", name))
            return True
        self.notes.append(f"{self.where}: {method}(): cannot resolve {name!r}; typed as Any")
        return False

    def annotation(self, node: ast.expr | None, method: str, *, optional: bool = False) -> str:
        """The annotation as generated code writes it; ``optional``: the default is None."""
        if node is None:
            self.typing.add(Import("typing", "Any"))
            return "Any"
        expr = Modernize(self.scope).visit(copy.deepcopy(node))
        filler = FillGenerics(self.scope)
        expr = filler.visit(expr)
        if filler.used_any:
            self.typing.add(Import("typing", "Any"))
        if optional and not allows_none(expr):
            expr = ast.BinOp(left=expr, op=ast.BitOr(), right=ast.Constant(None))
            # The server's own signature says otherwise: call it untyped (see _method).
            self.widened = True
        ast.fix_missing_locations(expr)
        if not all(self._resolve(n, False, method) for n in sorted(root_names(expr))):
            self.typing.add(Import("typing", "Any"))
            return "Any"
        return ast.unparse(expr)

    def default(self, node: ast.expr, method: str) -> str:
        expr = copy.deepcopy(node)

        class Inline(ast.NodeTransformer):
            def visit_Name(inner, n: ast.Name) -> ast.AST:
                literal = self.scope.literals.get(n.id)
                return copy.deepcopy(literal) if literal is not None else n

        expr = Inline().visit(expr)
        ast.fix_missing_locations(expr)
        for name in sorted(root_names(expr)):
            if not self._resolve(name, True, method):
                raise ServerModuleError(
                    path=self.where,
                    service=method,
                    reason=f"the default value of {method}() uses {name!r}, which is not defined "
                    "or imported in the server module",
                )
        return ast.unparse(expr)


def _first_line(doc: str | None) -> str | None:
    if not doc:
        return None
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return None


def read_server_interface(
    source: str, *, module: str, class_name: str, path: str, service: str, is_package: bool = False
) -> ServerInterface:
    """Parse ``source`` (the server module's text) and describe ``class_name``'s RPC methods."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise ServerModuleError(
            path=f"{path}:{exc.lineno}", service=service, reason=f"syntax error: {exc.msg}"
        ) from exc
    scope = _ModuleScope(tree, module, is_package)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    if class_name not in classes:
        raise ServerModuleError(
            path=path,
            service=service,
            reason=f"class {class_name} not found; define it or set server_class in the spec",
        )
    collector = _Collector(scope, path)
    reserved = reserved_client_names()
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for cls in _class_chain(classes[class_name], classes):
        for node in cls.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.setdefault(node.name, node)
    methods: list[RpcMethod] = []
    for name in sorted(functions, key=lambda n: _order(functions[n])):
        node = functions[name]
        if name.startswith("_") or name == "health_check_rpc":
            continue
        if not name.endswith("_rpc"):
            collector.notes.append(
                f"{path}: {class_name}.{name}() is not served: only methods named *_rpc are "
                f"(rename it {name}_rpc to serve it)"
            )
            continue
        client = name[: -len("_rpc")]
        if _decorated(node, ("staticmethod", "classmethod", "property")):
            collector.notes.append(
                f"{path}: skipped {name}(): static/class methods and properties are not forwarded"
            )
            continue
        if not client or client in reserved or not client.isidentifier() or _is_keyword(client):
            collector.notes.append(
                f"{path}: skipped {name}(): client method {client!r} would clash with "
                "RPCServiceBase; rename the server method"
            )
            continue
        if _takes_self(node):
            collector.notes.append(
                f"{path}: skipped {name}(): a parameter named 'self' besides the first would "
                "clash with the client method's own; rename it"
            )
            continue
        methods.append(_method(node, client, collector))
    return ServerInterface(
        module=module,
        class_name=class_name,
        methods=tuple(methods),
        typing_imports=tuple(sorted(collector.typing)),
        runtime_imports=tuple(sorted(collector.runtime)),
        notes=tuple(collector.notes),
        init_params=_keyword_params(functions.get("__init__")),
    )


def _keyword_params(init: ast.FunctionDef | ast.AsyncFunctionDef | None) -> tuple[str, ...]:
    """The parameters of ``__init__`` that a caller can pass by keyword."""
    if init is None:
        return ()
    # self is the first parameter: positional-only (``self, /``) or not
    plain = [a.arg for a in init.args.args][0 if init.args.posonlyargs else 1 :]
    return tuple(plain + [a.arg for a in init.args.kwonlyargs])


def _takes_self(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    a = node.args
    names = [x.arg for x in (*a.posonlyargs, *a.args)][1:] + [x.arg for x in a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return "self" in names


def _order(node: ast.AST) -> tuple[int, int]:
    return (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))


def _is_keyword(text: str) -> bool:
    import keyword

    return keyword.iskeyword(text)


def _decorated(node: ast.FunctionDef | ast.AsyncFunctionDef, names: tuple[str, ...]) -> bool:
    return any(isinstance(d, ast.Name) and d.id in names for d in node.decorator_list)


def _marked_idempotent(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """``@idempotent`` or ``@<module>.idempotent`` (rpcgen.runtime's mark)."""
    return any(
        (isinstance(d, ast.Name) and d.id == "idempotent")
        or (isinstance(d, ast.Attribute) and d.attr == "idempotent")
        for d in node.decorator_list
    )


_STREAM_HEADS = frozenset({"Iterator", "Generator", "AsyncIterator", "AsyncGenerator"})


def _yields(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the function itself (not a function or class inside it) yields."""
    todo: list[ast.AST] = list(node.body)
    while todo:
        current = todo.pop()
        if isinstance(current, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        todo.extend(ast.iter_child_nodes(current))
    return False


def _stream_item(returns: ast.expr | None) -> tuple[bool, ast.expr | None]:
    """(annotated as a stream, the item's annotation) from a return annotation."""
    if isinstance(returns, ast.Constant) and isinstance(returns.value, str):
        try:
            returns = ast.parse(returns.value, mode="eval").body
        except SyntaxError:
            return False, None
    if not isinstance(returns, ast.Subscript):
        return False, None
    head = returns.value
    name = head.id if isinstance(head, ast.Name) else getattr(head, "attr", None)
    if name not in _STREAM_HEADS:
        return False, None
    item = returns.slice
    if isinstance(item, ast.Tuple):
        item = item.elts[0] if item.elts else None  # type: ignore[assignment]
    return True, item


def _class_chain(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> list[ast.ClassDef]:
    """The class and its bases defined in the same module, most derived first."""
    chain, todo, seen = [], [cls], set()
    while todo:
        current = todo.pop(0)
        if current.name in seen:
            continue
        seen.add(current.name)
        chain.append(current)
        todo += [
            classes[b.id] for b in current.bases if isinstance(b, ast.Name) and b.id in classes
        ]
    return chain


def _is_none(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _method(node: ast.FunctionDef | ast.AsyncFunctionDef, client: str, c: _Collector) -> RpcMethod:
    c.widened = False
    a = node.args
    name = node.name
    positional = [*a.posonlyargs, *a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(
        a.defaults
    )
    params: list[Param] = []
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        if index == 0:
            continue  # self
        kind = "posonly" if index < len(a.posonlyargs) else "regular"
        params.append(
            Param(
                arg.arg,
                kind,
                c.annotation(arg.annotation, name, optional=_is_none(default)),
                c.default(default, name) if default is not None else None,
            )
        )
    if a.vararg:
        params.append(Param(a.vararg.arg, "vararg", c.annotation(a.vararg.annotation, name)))
    for arg, kw_default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        params.append(
            Param(
                arg.arg,
                "kwonly",
                c.annotation(arg.annotation, name, optional=_is_none(kw_default)),
                c.default(kw_default, name) if kw_default is not None else None,
            )
        )
    if a.kwarg:
        params.append(Param(a.kwarg.arg, "varkw", c.annotation(a.kwarg.annotation, name)))
    annotated_stream, item_node = _stream_item(node.returns)
    stream = annotated_stream or _yields(node)
    item: str | None = None
    if stream:  # the client returns Iterator[item] (and its aio view AsyncIterator[item])
        item = c.annotation(item_node, name)
        c.typing.add(Import("collections.abc", "Iterator"))
        c.typing.add(Import("collections.abc", "AsyncIterator"))
        returns = f"Iterator[{item}]"
    else:
        returns = c.annotation(node.returns, name)
    args = [*positional[1:], *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x is not None)]
    # Untyped: called through the Any-typed proxy, since mypy would check the call against
    # a signature it cannot trust (unannotated, or `x: int = None`, which it reads as int).
    untyped = node.returns is None or any(arg.annotation is None for arg in args) or c.widened
    doc = _first_line(ast.get_docstring(node))
    return RpcMethod(
        name,
        client,
        tuple(params),
        returns,
        doc,
        untyped,
        stream=stream,
        item=item,
        is_async=isinstance(node, ast.AsyncFunctionDef),
        idempotent=_marked_idempotent(node),
    )
