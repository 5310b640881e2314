"""rpcgen.generator: the code generator and its CLI."""

__all__: list[str] = []
