"""Shared pytest configuration: the tests import the package (installed with pip install -e .) and, for the faces,
the repository root, which pytest.ini's pythonpath puts on the path."""
