"""rpcgen: run a Python program's heavy parts as RPC service processes.

The top-level package holds nothing but ``python -m rpcgen``: the runtime is
``rpcgen.runtime`` and the generator ``rpcgen.generator``. Importing it imports
nothing else, so ``import rpcgen.runtime`` never pulls in the generator.
"""
