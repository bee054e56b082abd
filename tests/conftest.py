"""Shared fixtures: real databases, the real embedded broker, the offline test model.

They live in tests/support/ and are loaded here as pytest plugins, so every test under tests/unit/ and
tests/integration/ sees them without importing them. pytest only honours `pytest_plugins` in the
top-level conftest, which this is.
"""

pytest_plugins = [
    "tests.support.db",
    "tests.support.kafka",
    "tests.support.model",
]
