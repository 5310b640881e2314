"""pytest configuration for this project.

Created once by rpcgen; yours to edit. Its being here is what matters: pytest puts
the folder of a conftest.py that is not inside a package on sys.path, so plain
`pytest` imports this project's packages (such as `services`) the way
`python -m pytest` does. The `rpcgen` pytest plugin (fixtures for services) is
loaded by its entry point and needs nothing here.
"""
