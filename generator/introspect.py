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
* ``typing.Optional/Union/List/...`` become ``X | None``, ``list[...]``, and
  ``typing.Callable`` & co. come from ``collections.abc``, as current ruff wants;
* loose annotations are made strict in the generated signatures only: a bare
  generic (``list``, ``dict``, ``Callable``) gets ``Any`` arguments, and a parameter
  whose default is ``None`` gets ``| None`` (implicit ``Optional``), so the client is
  ``mypy --strict`` and ruff clean whatever the server module's style.
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
_TYPING_MODULES = ("typing", "typing_extensions")
_PEP585 = {
    "List": "list",
    "Dict": "dict",
    "Set": "set",
    "FrozenSet": "frozenset",
    "Tuple": "tuple",
    "Type": "type",
}
_ABC_ALIASES = frozenset(
    {
        "AsyncGenerator",
        "AsyncIterable",
        "AsyncIterator",
        "Awaitable",
        "ByteString",
        "Callable",
        "Collection",
        "Container",
        "Coroutine",
        "Generator",
        "Hashable",
        "ItemsView",
        "Iterable",
        "Iterator",
        "KeysView",
        "Mapping",
        "MappingView",
        "MutableMapping",
        "MutableSequence",
        "MutableSet",
        "Reversible",
        "Sequence",
        "Sized",
        "ValuesView",
    }
)


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
                ]
                for m in self.methods
            ],
        }
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
            if imp and imp.name and imp.module in _TYPING_MODULES:
                return imp.name
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            imp = self.imports.get(node.value.id)
            if imp and imp.name is None and imp.module in _TYPING_MODULES:
                return node.attr
        return None


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


class _Modernize(ast.NodeTransformer):
    """Rewrite typing aliases to PEP 604/585 forms; parse string annotations."""

    def __init__(self, scope: _ModuleScope) -> None:
        self.scope = scope

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str):
            try:
                parsed = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return node
            result: ast.AST = self.visit(parsed)
            return result
        return node

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        name = self.scope.typing_name(node.value)
        if name == "Literal":
            return node  # its strings are values, not annotations
        node = self.generic_visit(node)  # type: ignore[assignment]
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if name == "Optional" and len(args) == 1:
            return ast.BinOp(left=args[0], op=ast.BitOr(), right=ast.Constant(None))
        if name == "Union" and args:
            result = args[0]
            for arg in args[1:]:
                result = ast.BinOp(left=result, op=ast.BitOr(), right=arg)
            return result
        if name in _PEP585:
            return ast.Subscript(
                value=ast.Name(_PEP585[name], ast.Load()), slice=node.slice, ctx=ast.Load()
            )
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        name = self.scope.typing_name(node)
        if name in _PEP585:
            return ast.Name(_PEP585[name], ast.Load())
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        name = self.scope.typing_name(node)
        if name in _PEP585:
            return ast.Name(_PEP585[name], ast.Load())
        if name is not None:
            # typing.X -> X, imported on its own (from collections.abc for ABC aliases)
            return ast.Name(name, ast.Load())
        return self.generic_visit(node)


#: Generic classes and how many type arguments a bare use of each gets ("..." for tuple).
_GENERIC_ARITY: dict[str, int | str] = {
    "list": 1,
    "set": 1,
    "frozenset": 1,
    "type": 1,
    "dict": 2,
    "tuple": "...",
    "Callable": "...",
    "Iterable": 1,
    "Iterator": 1,
    "Sequence": 1,
    "MutableSequence": 1,
    "Collection": 1,
    "Container": 1,
    "AbstractSet": 1,
    "MutableSet": 1,
    "Mapping": 2,
    "MutableMapping": 2,
    "Generator": 3,
    "AsyncIterable": 1,
    "AsyncIterator": 1,
    "AsyncGenerator": 2,
    "Awaitable": 1,
    "Coroutine": 3,
    "Deque": 1,
    "DefaultDict": 2,
    "OrderedDict": 2,
    "Counter": 1,
    "ChainMap": 2,
}


class _FillGenerics(ast.NodeTransformer):
    """``list`` -> ``list[Any]``, ``Callable`` -> ``Callable[..., Any]``: a bare generic
    is an error under mypy --strict (type-arg)."""

    def __init__(self, scope: _ModuleScope) -> None:
        self.scope = scope
        self.used_any = False

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        node.slice = self.visit(node.slice)  # the subscripted name itself stays as it is
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        return node  # module.Name: left alone (its arity is not known here)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        arity = _GENERIC_ARITY.get(node.id)
        if arity is None or not self._is_generic(node.id):
            return node
        self.used_any = True
        anything = ast.Name("Any", ast.Load())
        args: list[ast.expr]
        if arity == "...":
            args = (
                [anything, ast.Constant(Ellipsis)]
                if node.id == "tuple"
                else [
                    ast.Constant(Ellipsis),
                    anything,
                ]
            )
        else:
            args = [ast.Name("Any", ast.Load()) for _ in range(int(arity))]
        slice_: ast.expr = args[0] if len(args) == 1 else ast.Tuple(args, ast.Load())
        return ast.Subscript(value=node, slice=slice_, ctx=ast.Load())

    def _is_generic(self, name: str) -> bool:
        if name in ("list", "set", "frozenset", "type", "dict", "tuple"):
            return name not in self.scope.defined and name not in self.scope.imports
        imp = self.scope.imports.get(name)
        return imp is not None and imp.module in (
            *_TYPING_MODULES,
            "collections.abc",
            "collections",
        )


def _allows_none(expr: ast.expr) -> bool:
    """Whether an annotation already admits None (``X | None``, ``None``, ``Any``)."""
    if isinstance(expr, ast.Constant) and expr.value is None:
        return True
    if isinstance(expr, ast.Name) and expr.id in ("Any", "object", "None"):
        return True
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        return _allows_none(expr.left) or _allows_none(expr.right)
    return False


def _root_names(node: ast.AST) -> set[str]:
    """Names whose binding an expression needs (the leftmost part of dotted names)."""
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.add(sub.id)
    return found


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
            if imp.name and imp.module in _TYPING_MODULES:
                module = "collections.abc" if imp.name in _ABC_ALIASES else "typing"
                imp = Import(module, imp.name, imp.alias)
            target.add(imp)
            return True
        if name in scope.defined:
            target.add(Import(scope.module, name))
            return True
        if name in _BUILTINS:
            return True
        if name in _ABC_ALIASES:  # typing.Callable rewritten to a bare name
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
        expr = _Modernize(self.scope).visit(copy.deepcopy(node))
        filler = _FillGenerics(self.scope)
        expr = filler.visit(expr)
        if filler.used_any:
            self.typing.add(Import("typing", "Any"))
        if optional and not _allows_none(expr):
            expr = ast.BinOp(left=expr, op=ast.BitOr(), right=ast.Constant(None))
            # The server's own signature says otherwise: call it untyped (see _method).
            self.widened = True
        ast.fix_missing_locations(expr)
        if not all(self._resolve(n, False, method) for n in sorted(_root_names(expr))):
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
        for name in sorted(_root_names(expr)):
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
        if isinstance(node, ast.AsyncFunctionDef):
            collector.notes.append(
                f"{path}: skipped {name}(): async methods cannot be served over BaseManager"
            )
            continue
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
    )


def _takes_self(node: ast.FunctionDef) -> bool:
    a = node.args
    names = [x.arg for x in (*a.posonlyargs, *a.args)][1:] + [x.arg for x in a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return "self" in names


def _order(node: ast.AST) -> tuple[int, int]:
    return (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))


def _is_keyword(text: str) -> bool:
    import keyword

    return keyword.iskeyword(text)


def _decorated(node: ast.FunctionDef, names: tuple[str, ...]) -> bool:
    return any(isinstance(d, ast.Name) and d.id in names for d in node.decorator_list)


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


def _method(node: ast.FunctionDef, client: str, c: _Collector) -> RpcMethod:
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
    returns = c.annotation(node.returns, name)
    args = [*positional[1:], *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x is not None)]
    # Untyped: called through the Any-typed proxy, since mypy would check the call against
    # a signature it cannot trust (unannotated, or `x: int = None`, which it reads as int).
    untyped = node.returns is None or any(arg.annotation is None for arg in args) or c.widened
    doc = _first_line(ast.get_docstring(node))
    return RpcMethod(name, client, tuple(params), returns, doc, untyped)
