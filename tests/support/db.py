"""Database fixtures: a throwaway SQLite file, a throwaway PostgreSQL database, and both in turn.

Loaded by tests/conftest.py as a pytest plugin. Every PostgreSQL test gets a
brand-new database with a random name, dropped afterwards, so tests never see each other's rows or
anything left over from an earlier run. The server is the local one on 127.0.0.1:5432 (trust auth);
run `pytest -m "not postgres"` where there is none.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

__all__ = ["POSTGRES_ADMIN_CONNINFO", "database_url", "postgres_url", "sqlite_url"]

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USER = "postgres"
# The maintenance database: CREATE/DROP DATABASE cannot run inside the database being dropped.
POSTGRES_ADMIN_CONNINFO = (
    f"host={POSTGRES_HOST} port={POSTGRES_PORT} user={POSTGRES_USER} dbname=postgres connect_timeout=5"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL (psycopg 3) for a new, empty PostgreSQL database, dropped after the test."""
    name = f"moderation_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_CONNINFO, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_HOST}:{POSTGRES_PORT} ({exc}); "
            'run with -m "not postgres" to skip these tests'
        )
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql+psycopg://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
        finally:
            # FORCE ends connections a failing test may have left open (PostgreSQL 13+).
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL for a SQLite file in the test's temporary directory (not created yet)."""
    return f"sqlite:///{tmp_path / 'verdicts.db'}"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses this runs twice: once on SQLite, once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))
