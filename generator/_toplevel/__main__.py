"""``python -m rpcgen``: the rpcgen CLI, whichever ``rpcgen`` is first on PATH.

Debian's ``/usr/bin/rpcgen`` (the ONC RPC compiler) shadows the console script
when the venv is not active; this entry point never depends on PATH.
"""

from rpcgen.generator.cli import main

raise SystemExit(main())
