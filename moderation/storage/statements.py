"""SQL shapes the stores share: the dialect's idempotent insert, statements cut to fit the bind-parameter
limit, and the streaming scan that backtests and shadow reports read millions of rows through.

Only SQLite and PostgreSQL are supported: their dialects' `insert()` is what provides ON CONFLICT.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine, Row, Select
from sqlalchemy.dialects import postgresql, sqlite

from moderation.exceptions import ConfigurationError
from moderation.storage.errors import storage_errors

# The dialect-specific insert() is what provides on_conflict_do_nothing() and on_conflict_do_update().
INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}

_T = TypeVar("_T")


def _max_bind_parameters(dialect_name: str) -> int:
    """How many bound parameters one statement may carry, with room to spare."""
    if dialect_name == "sqlite":
        # SQLITE_MAX_VARIABLE_NUMBER: 999 before SQLite 3.32, 32766 since.
        return 999 if sqlite3.sqlite_version_info < (3, 32, 0) else 32_000
    return 30_000  # the PostgreSQL protocol allows 65535


def dialect_insert(engine: Engine) -> tuple[Any, int]:
    """The dialect's insert() (the one with ON CONFLICT) and how many parameters one statement may bind."""
    dialect_name = engine.dialect.name
    if dialect_name not in INSERTS:
        raise ConfigurationError(f"unsupported database {dialect_name!r}: use sqlite or postgresql")
    return INSERTS[dialect_name], _max_bind_parameters(dialect_name)


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def stream_chunks(
    engine: Engine, query: Select[Any], chunk_size: int, convert: Callable[[Sequence[Row[Any]]], _T], failure: str
) -> Iterator[_T]:
    """`convert` of each list of `chunk_size` rows of `query`, read straight from the driver's cursor.

    One connection stays open while the caller iterates (closing the iterator closes it); a database
    error on the way is a StorageError that starts with `failure`.
    """
    with storage_errors(failure), engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(query)
        for rows in result.partitions(chunk_size):
            yield convert(rows)
