"""rpcgen templates (package data)."""
