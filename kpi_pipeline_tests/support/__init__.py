"""Helpers shared by the tests, and only these: builders, fixtures, harnesses, servers.

No test module imports another test module or a conftest (architecture/test_test_layout.py).
Fixtures used across folders are registered once, by the root conftest's ``pytest_plugins``."""
