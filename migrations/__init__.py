"""Alembic scripts for the verdicts schema; shipped in the wheel as `moderation.migrations`.

A package (not just a folder) so `moderation.storage.migrate` can find it from its `__file__`
wherever the wheel is installed.
"""
