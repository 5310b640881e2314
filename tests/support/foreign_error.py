"""A module only a server process imports; importing it leaves a mark (for the test that
a client never imports a module because of a server's exception)."""

from __future__ import annotations

import os

_MARKS = os.environ.get("RPCGEN_TEST_IMPORT_MARKS")
if _MARKS:
    with open(_MARKS, "a") as marks:
        marks.write(f"{os.getpid()}\n")


class ForeignError(Exception):
    """Raised by a server; its module is not imported in the client."""
