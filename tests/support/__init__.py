"""What the tests share: fixtures (loaded by tests/conftest.py as pytest plugins) and plain helpers.

Test modules import helpers from here and never from one another, so each test file can move, split
or go without breaking another.
"""
