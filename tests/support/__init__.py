"""Helpers shared by the test suites (importable by spawned server processes)."""
