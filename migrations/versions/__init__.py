"""Alembic revisions, one file each; a package so setuptools ships them in the wheel."""
