"""The services package: rpcgen services (created once by rpcgen; yours to edit)."""
