"""Build import blocks the way isort / ruff's ``I001`` sorts them.

Sections: ``__future__``, standard library, third party, first party (a module
whose file exists in the project, as ruff decides). In each section, plain
``import x`` lines come before ``from x import y`` lines; modules sort
case-insensitively; names sort constants first, then classes, then the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .introspect import Import
from .naming import STDLIB_MODULES

__all__ = ["import_lines"]


def _name_key(name: str) -> tuple[int, str, str]:
    if name.isupper() and len(name) > 1:
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    return (kind, name.lower(), name)


def _section(module: str, first_party: Callable[[str], bool]) -> int:
    top = module.split(".")[0]
    if top == "__future__":
        return 0
    if top in STDLIB_MODULES:
        return 1
    if first_party(module):
        return 3
    return 2


def import_lines(imports: Iterable[Import], first_party: Callable[[str], bool]) -> list[str]:
    """Sorted import statements, sections separated by an empty string."""
    sections: dict[
        int, tuple[set[tuple[str, str | None]], dict[str, set[str]], set[tuple[str, str, str]]]
    ] = {}
    for imp in set(imports):
        plain, froms, aliased = sections.setdefault(
            _section(imp.module, first_party), (set(), {}, set())
        )
        if imp.name is None:
            plain.add((imp.module, imp.alias))
        elif imp.alias and imp.alias != imp.name:
            aliased.add((imp.module, imp.name, imp.alias))
        else:
            froms.setdefault(imp.module, set()).add(imp.name)
    lines: list[str] = []
    for key in sorted(sections):
        plain, froms, aliased = sections[key]
        if lines:
            lines.append("")
        for module, alias in sorted(plain, key=lambda p: (p[0].lower(), p[0], p[1] or "")):
            lines.append(f"import {module} as {alias}" if alias else f"import {module}")
        from_lines: list[tuple[str, int, str]] = []
        for module, names in froms.items():
            joined = ", ".join(sorted(names, key=_name_key))
            from_lines.append((module, 0, f"from {module} import {joined}"))
        for module, name, alias in aliased:
            from_lines.append((module, 1, f"from {module} import {name} as {alias}"))
        for _, _, line in sorted(from_lines, key=lambda t: (t[0].lower(), t[0], t[1], t[2])):
            lines.append(line)
    return lines
