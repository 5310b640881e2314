"""Names: validation of service names and module paths, and derived file names."""

from __future__ import annotations

import keyword
import re
import sys

__all__ = ["is_capwords", "is_dotted_identifier", "is_identifier", "snake_case"]

_CAPWORDS = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

STDLIB_MODULES: frozenset[str] = frozenset(getattr(sys, "stdlib_module_names", ()))


def snake_case(name: str) -> str:
    """``LivePriceFetcher`` -> ``live_price_fetcher``; ``HTTPServer`` -> ``http_server``."""
    return _BOUNDARY.sub("_", name).lower()


def is_identifier(text: str) -> bool:
    return bool(_IDENT.match(text)) and not keyword.iskeyword(text)


def is_capwords(text: str) -> bool:
    return bool(_CAPWORDS.match(text)) and not keyword.iskeyword(text)


def is_dotted_identifier(text: str) -> bool:
    return bool(text) and all(is_identifier(part) for part in text.split("."))
