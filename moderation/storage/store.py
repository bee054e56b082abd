"""Writing and reading verdicts: the only code that talks SQL to the verdicts table.

Kafka delivers at least once, so the same event can arrive again after a rebalance or a crash
before the offset commit. `VerdictStore.save_batch` makes redelivery harmless: `event_id` is unique
and the insert is `ON CONFLICT (event_id) DO NOTHING`, so the first verdict recorded for an event is
the one that stays, and the caller gets that stored verdict back to act on (for example to publish
the review message that matches what the database says, not what this attempt computed).

Only SQLite (tests, single-host runs) and PostgreSQL (production) are supported: the idempotent
insert is written with their dialects' `insert()`. Tables are created by migrations
(`moderation.storage.migrate`), never here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, Select, create_engine, event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DataError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from moderation.exceptions import ConfigurationError, ModerationError
from moderation.storage.models import (
    embeddings_table,
    review_publications_table,
    shadow_verdicts_table,
    verdicts_table,
)
from moderation.verdict import ShadowVerdict, Verdict, VerdictStatus

SQLITE_BUSY_TIMEOUT_MS = 5_000  # wait this long for another writer instead of failing at once
POSTGRES_CONNECT_TIMEOUT_S = 10  # libpq waits forever by default; a dead host should fail a health check

# The dialect-specific insert() is what provides on_conflict_do_nothing().
_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}

_T = TypeVar("_T")


class StorageError(ModerationError):
    """The database refused or could not run a statement; the driver's exception is the __cause__.

    `permanent`: the database rejected the data itself (a data or integrity error), so the same
    statement will fail again however often it is retried; otherwise (connection lost, timeout, lock)
    a retry may succeed.
    """

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def normalise_url(url: str) -> URL:
    """Parse `url`, pointing plain PostgreSQL URLs at psycopg 3 (SQLAlchemy would pick psycopg2)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"invalid database URL: {exc}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_engine_for(url: str) -> Engine:
    """An engine configured for a long-running consumer on SQLite or PostgreSQL.

    SQLite: the database file's directory is created if missing, and every connection uses WAL (readers
    do not block the writer) with a busy timeout. PostgreSQL: psycopg 3 and a connect timeout. Both
    pre-ping pooled connections, so a database restart costs one reconnect, not a failed batch.
    """
    parsed = normalise_url(url)
    backend = parsed.get_backend_name()
    if backend not in _INSERTS:
        raise ConfigurationError(f"unsupported database {backend!r}: use sqlite or postgresql")
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        _create_sqlite_directory(parsed)
    elif "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    try:
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigurationError(f"cannot use database URL {parsed!r}: {exc}") from exc
    if backend == "sqlite":
        event.listen(engine, "connect", _configure_sqlite_connection)
    return engine


def _create_sqlite_directory(url: URL) -> None:
    database = url.database or ""
    # In-memory databases and `file:` URIs have no directory we could sensibly create.
    if database in ("", ":memory:") or database.startswith("file:") or url.query.get("uri"):
        return
    directory = Path(database).parent
    # One level only, like the default `data/`: a missing tree above it is more likely a mistyped URL
    # than a wish, and creating it would scatter directories wherever the typo points.
    if not directory.parent.is_dir():
        raise StorageError(
            f"the SQLite directory {str(directory)!r} does not exist, nor does {str(directory.parent)!r}: "
            "create it first or correct the database URL"
        )
    try:
        directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the SQLite directory {str(directory)!r}: {exc}") from exc


def _configure_sqlite_connection(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # persistent in the file; cheap to repeat
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")  # per connection
    finally:
        cursor.close()


def _max_bind_parameters(dialect_name: str) -> int:
    """How many bound parameters one statement may carry, with room to spare."""
    if dialect_name == "sqlite":
        # SQLITE_MAX_VARIABLE_NUMBER: 999 before SQLite 3.32, 32766 since.
        return 999 if sqlite3.sqlite_version_info < (3, 32, 0) else 32_000
    return 30_000  # the PostgreSQL protocol allows 65535


def dialect_insert(engine: Engine) -> tuple[Any, int]:
    """The dialect's insert() (the one with ON CONFLICT) and how many parameters one statement may bind."""
    dialect_name = engine.dialect.name
    if dialect_name not in _INSERTS:
        raise ConfigurationError(f"unsupported database {dialect_name!r}: use sqlite or postgresql")
    return _INSERTS[dialect_name], _max_bind_parameters(dialect_name)


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _describe(exc: SQLAlchemyError) -> str:
    """The driver's message, without the SQL and parameters SQLAlchemy appends (they can be huge)."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0] if lines else ''}"


def _to_row(verdict: Verdict) -> dict[str, Any]:
    # created_at is deliberately absent: the database's clock stamps it.
    return {
        "event_id": verdict.event_id,
        "content_id": verdict.content_id,
        "source": verdict.source,
        "status": VerdictStatus(verdict.status).value,
        "flagged": verdict.flagged,
        "top_category": verdict.top_category,
        "action": verdict.action,
        "scores": dict(verdict.scores),
        "best_prompt": verdict.best_prompt,
        "policy_version": verdict.policy_version,
        "policy_hash": verdict.policy_hash,
        "model_id": verdict.model_id,
        "image_ref": verdict.image_ref,
        "image_sha256": verdict.image_sha256,
        "uploaded_at": verdict.uploaded_at,
        "error_reason": verdict.error_reason,
        # Decoder messages can quote bytes of the file; PostgreSQL text cannot hold NUL.
        "error_detail": verdict.error_detail.replace("\x00", "\\x00") if verdict.error_detail else None,
        "load_ms": verdict.load_ms,
        "score_ms": verdict.score_ms,
        "uncertain": verdict.uncertain,
        "embedding_reused": verdict.embedding_reused,
    }


def _embedding_row(verdict: Verdict) -> dict[str, Any] | None:
    if verdict.embedding is None or verdict.embedding_reused or verdict.image_sha256 is None:
        return None  # a reused embedding is stored already (or was pruned: then it stays pruned)
    return {
        "model_id": verdict.model_id,
        "image_sha256": verdict.image_sha256,
        "dim": int(verdict.embedding.shape[-1]),
        "vector": verdict.embedding.astype("<f2").tobytes(),
    }


def _shadow_row(shadow: ShadowVerdict) -> dict[str, Any]:
    return {
        "event_id": shadow.event_id,
        "policy_version": shadow.policy_version,
        "policy_hash": shadow.policy_hash,
        "flagged": shadow.flagged,
        "top_category": shadow.top_category,
        "action": shadow.action,
        "uncertain": shadow.uncertain,
        "scores": dict(shadow.scores),
    }


def _to_verdict(row: Mapping[str, Any]) -> Verdict:
    return Verdict(
        event_id=row["event_id"],
        content_id=row["content_id"],
        source=row["source"],
        status=VerdictStatus(row["status"]),
        flagged=bool(row["flagged"]),
        top_category=row["top_category"],
        action=row["action"],
        scores={str(name): float(p) for name, p in row["scores"].items()},
        best_prompt=row["best_prompt"],
        policy_version=row["policy_version"],
        policy_hash=row["policy_hash"],
        model_id=row["model_id"],
        image_ref=row["image_ref"],
        image_sha256=row["image_sha256"],
        uploaded_at=row["uploaded_at"],
        error_reason=row["error_reason"],
        error_detail=row["error_detail"],
        load_ms=row["load_ms"],
        score_ms=row["score_ms"],
        created_at=row["created_at"],
        uncertain=bool(row["uncertain"]),
        embedding_reused=bool(row["embedding_reused"]),
    )


class VerdictStore:
    """Idempotent writes and the few reads the service and its dashboard need, over one Engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert, self._max_parameters = dialect_insert(engine)

    def _insert_ignoring_repeats(self, conn: Any, table: Any, rows: Sequence[dict[str, Any]], key: list[Any]) -> None:
        """Multi-row INSERT ... ON CONFLICT (key) DO NOTHING, in chunks that fit the parameter limit."""
        if not rows:
            return
        per_insert = max(1, self._max_parameters // len(rows[0]))
        for chunk in _chunks(rows, per_insert):
            conn.execute(self._insert(table).values(list(chunk)).on_conflict_do_nothing(index_elements=key))

    @property
    def engine(self) -> Engine:
        return self._engine

    def save_batch(self, verdicts: Sequence[Verdict]) -> list[Verdict]:
        """Record `verdicts` in one transaction; return, in input order, what the database holds for each.

        An event_id already stored keeps its original row, and the original comes back; repeats of one
        event_id within the batch collapse to the first. The verdicts' new embeddings and shadow verdicts
        are written in the same transaction, equally idempotent. Either all of it is written or nothing.
        """
        if not verdicts:
            return []
        first: dict[str, Verdict] = {}
        for verdict in verdicts:
            first.setdefault(verdict.event_id, verdict)
        rows = [_to_row(v) for v in first.values()]
        event_ids = list(first)
        embeddings = {
            (row["model_id"], row["image_sha256"]): row
            for v in first.values()
            if (row := _embedding_row(v)) is not None
        }
        shadows = [_shadow_row(shadow) for v in first.values() for shadow in v.shadows]
        table = verdicts_table
        stored: dict[str, Verdict] = {}
        try:
            with self._engine.begin() as conn:
                self._insert_ignoring_repeats(conn, table, rows, [table.c.event_id])
                self._insert_ignoring_repeats(
                    conn, embeddings_table, list(embeddings.values()),
                    [embeddings_table.c.model_id, embeddings_table.c.image_sha256],
                )
                self._insert_ignoring_repeats(
                    conn, shadow_verdicts_table, shadows,
                    [shadow_verdicts_table.c.event_id, shadow_verdicts_table.c.policy_hash],
                )
                # Read back inside the same transaction: rows we inserted and rows that were already
                # there (including ones a concurrent writer committed while we waited on its lock).
                for id_chunk in _chunks(event_ids, self._max_parameters):
                    result = conn.execute(select(table).where(table.c.event_id.in_(id_chunk)))
                    for row in result.mappings():
                        stored[row["event_id"]] = _to_verdict(row)
        except SQLAlchemyError as exc:
            permanent = isinstance(exc, DataError | IntegrityError)
            raise StorageError(f"could not save {len(verdicts)} verdicts: {_describe(exc)}", permanent) from exc
        missing = [event_id for event_id in event_ids if event_id not in stored]
        if missing:  # cannot happen unless something deletes rows under us; never return a partial answer
            raise StorageError(f"verdicts missing right after saving them: {missing[:5]}")
        return [stored[verdict.event_id] for verdict in verdicts]

    def reviews_published(self, event_ids: Sequence[str]) -> set[str]:
        """Which of `event_ids` already had their review message published and acknowledged."""
        table = review_publications_table
        found: set[str] = set()
        try:
            with self._engine.connect() as conn:
                for id_chunk in _chunks(list(dict.fromkeys(event_ids)), self._max_parameters):
                    found.update(conn.execute(select(table.c.event_id).where(table.c.event_id.in_(id_chunk))).scalars())
        except SQLAlchemyError as exc:
            raise StorageError(f"could not read review publications: {_describe(exc)}") from exc
        return found

    def mark_reviews_published(self, event_ids: Sequence[str]) -> None:
        """Record that these verdicts' review messages were acknowledged by the brokers (idempotent)."""
        rows = [{"event_id": event_id} for event_id in dict.fromkeys(event_ids)]
        try:
            with self._engine.begin() as conn:
                table = review_publications_table
                self._insert_ignoring_repeats(conn, table, rows, [table.c.event_id])
        except SQLAlchemyError as exc:
            raise StorageError(f"could not record {len(rows)} review publications: {_describe(exc)}") from exc

    def get(self, event_id: str) -> Verdict | None:
        """The verdict stored for `event_id`, or None."""
        found = self._fetch(select(verdicts_table).where(verdicts_table.c.event_id == event_id))
        return found[0] if found else None

    def count(self) -> int:
        """How many verdicts are stored."""
        try:
            with self._engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(verdicts_table)).scalar_one())
        except SQLAlchemyError as exc:
            raise StorageError(f"could not count verdicts: {_describe(exc)}") from exc

    def recent(self, limit: int = 50) -> list[Verdict]:
        """The newest verdicts, newest first."""
        return self._fetch(self._newest_first(select(verdicts_table), limit))

    def flagged(self, limit: int = 50) -> list[Verdict]:
        """The newest flagged verdicts, newest first (served by the (flagged, created_at) index)."""
        query = select(verdicts_table).where(verdicts_table.c.flagged)
        return self._fetch(self._newest_first(query, limit))

    def ping(self) -> None:
        """Raise StorageError unless the database answers `SELECT 1`: for readiness probes."""
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StorageError(f"database unreachable: {_describe(exc)}") from exc

    @staticmethod
    def _newest_first(query: Select[Any], limit: int) -> Select[Any]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        # created_at has one value per transaction (PostgreSQL) or per second (SQLite): id breaks ties.
        return query.order_by(verdicts_table.c.created_at.desc(), verdicts_table.c.id.desc()).limit(limit)

    def _fetch(self, query: Select[Any]) -> list[Verdict]:
        try:
            with self._engine.connect() as conn:
                return [_to_verdict(row) for row in conn.execute(query).mappings()]
        except SQLAlchemyError as exc:
            raise StorageError(f"could not read verdicts: {_describe(exc)}") from exc
