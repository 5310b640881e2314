"""How an annotation copied from a server module is written in generated code.

* ``typing.Optional/Union/List/...`` become ``X | None``, ``list[...]`` (PEP 604/585),
  and string annotations are parsed;
* a bare generic (``list``, ``dict``, ``Callable``) gets ``Any`` arguments, and an
  implicit ``Optional`` (a ``None`` default) is written out: mypy --strict and ruff pass
  the generated code whatever the server module's style.

Names are judged through the server module's scope (:class:`Scope`): ``List`` is
typing's only if the module imported it from typing.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

__all__ = [
    "ABC_ALIASES",
    "TYPING_MODULES",
    "FillGenerics",
    "Modernize",
    "Scope",
    "allows_none",
    "root_names",
]


class Scope(Protocol):
    """What the rewriting needs of a server module: its imports and its own names."""

    @property
    def imports(self) -> Mapping[str, Any]: ...

    @property
    def defined(self) -> AbstractSet[str]: ...

    def typing_name(self, node: ast.expr) -> str | None: ...


TYPING_MODULES = ("typing", "typing_extensions")
_PEP585 = {
    "List": "list",
    "Dict": "dict",
    "Set": "set",
    "FrozenSet": "frozenset",
    "Tuple": "tuple",
    "Type": "type",
}
ABC_ALIASES = frozenset(
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


class Modernize(ast.NodeTransformer):
    """Rewrite typing aliases to PEP 604/585 forms; parse string annotations."""

    def __init__(self, scope: Scope) -> None:
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


class FillGenerics(ast.NodeTransformer):
    """``list`` -> ``list[Any]``, ``Callable`` -> ``Callable[..., Any]``: a bare generic
    is an error under mypy --strict (type-arg)."""

    def __init__(self, scope: Scope) -> None:
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
            *TYPING_MODULES,
            "collections.abc",
            "collections",
        )


def allows_none(expr: ast.expr) -> bool:
    """Whether an annotation already admits None (``X | None``, ``None``, ``Any``)."""
    if isinstance(expr, ast.Constant) and expr.value is None:
        return True
    if isinstance(expr, ast.Name) and expr.id in ("Any", "object", "None"):
        return True
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        return allows_none(expr.left) or allows_none(expr.right)
    return False


def root_names(node: ast.AST) -> set[str]:
    """Names whose binding an expression needs (the leftmost part of dotted names)."""
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.add(sub.id)
    return found
