"""Verdict storage on real databases: every `database_url` test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError, OperationalError

from moderation.exceptions import ConfigurationError, ModerationError
from moderation.storage import (
    Base,
    StorageError,
    VerdictStore,
    alembic_config,
    create_engine_for,
    current_revision,
    head_revision,
    open_engine,
    storage_errors,
    upgrade,
)
from moderation.verdict import Verdict, VerdictStatus
from tests.support.paths import REPO

REPO_ROOT = REPO
UTC = timezone.utc
CEST = timezone(timedelta(hours=2))
EXPECTED_INDEXES = {
    "ix_verdicts_content_id": ["content_id"],
    "ix_verdicts_created_at": ["created_at"],
    "ix_verdicts_flagged_created_at": ["flagged", "created_at"],
    "ix_verdicts_status": ["status"],
}


def make_verdict(event_id: str, **changes: Any) -> Verdict:
    """A flagged, fully populated verdict; `changes` overrides any field."""
    verdict = Verdict(
        event_id=event_id,
        content_id=f"content-{event_id}",
        source="uploads",
        status=VerdictStatus.OK,
        flagged=True,
        top_category="violence",
        action="block",
        scores={"violence": 0.8123456789, "safe": 0.1876543211},
        best_prompt="a photo of a violent scene",
        policy_version="2024-11-01",
        policy_hash="ab" * 32,
        model_id="openai/clip-vit-base-patch32",
        image_ref=f"https://images.example.com/{event_id}.jpg",
        image_sha256="cd" * 32,
        uploaded_at=datetime(2024, 11, 27, 18, 30, 15, 123456, tzinfo=CEST),
        load_ms=12.5,
        score_ms=48.25,
    )
    return replace(verdict, **changes)


def make_error_verdict(event_id: str) -> Verdict:
    """What an image that could not be fetched ends in: most fields None, no scores."""
    return make_verdict(
        event_id,
        status=VerdictStatus.ERROR,
        flagged=False,
        top_category=None,
        action=None,
        scores={},
        best_prompt=None,
        image_sha256=None,
        error_reason="fetch_timeout",
        error_detail="GET https://images.example.com/x.jpg timed out after 5.0s",
        load_ms=None,
        score_ms=None,
    )


@pytest.fixture
def migrated_url(database_url: str) -> str:
    upgrade(database_url)
    return database_url


@pytest.fixture
def store(migrated_url: str) -> Iterator[VerdictStore]:
    engine = create_engine_for(migrated_url)
    yield VerdictStore(engine)
    engine.dispose()


# --- migrations -----------------------------------------------------------------------------------


def test_upgrade_creates_the_table_and_indexes(migrated_url: str) -> None:
    engine = create_engine_for(migrated_url)
    try:
        inspector = inspect(engine)
        assert "verdicts" in inspector.get_table_names()
        columns = {column["name"] for column in inspector.get_columns("verdicts")}
        assert columns == set(Base.metadata.tables["verdicts"].columns.keys())
        indexes = {index["name"]: index["column_names"] for index in inspector.get_indexes("verdicts")}
        assert EXPECTED_INDEXES.items() <= indexes.items()
        unique = inspector.get_unique_constraints("verdicts")
        assert [(u["name"], u["column_names"]) for u in unique] == [("uq_verdicts_event_id", ["event_id"])]
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(migrated_url: str) -> None:
    engine = create_engine_for(migrated_url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_upgrade_twice_is_a_no_op_and_reports_the_head(database_url: str) -> None:
    assert current_revision(database_url) is None
    upgrade(database_url)
    assert current_revision(database_url) == head_revision() == "0009"
    engine = create_engine_for(database_url)
    try:
        VerdictStore(engine).save_batch([make_verdict("e1")])
        upgrade(database_url)
        assert current_revision(database_url) == "0009"
        assert VerdictStore(engine).count() == 1
    finally:
        engine.dispose()


def test_downgrade_to_base_drops_the_table(migrated_url: str) -> None:
    command.downgrade(alembic_config(migrated_url), "base")
    assert current_revision(migrated_url) is None
    engine = create_engine_for(migrated_url)
    try:
        assert "verdicts" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_alembic_cli_takes_the_url_from_the_environment(database_url: str, tmp_path: Path) -> None:
    environment = {**os.environ, "MODERATION_DATABASE__URL": database_url}
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO_ROOT / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path,  # the ini resolves paths from its own directory, not the working directory
        env=environment,
        check=True,
        capture_output=True,
    )
    assert current_revision(database_url) == "0009"


def test_alembic_config_points_at_the_shipped_scripts() -> None:
    config = alembic_config("postgresql://user:p%40ss@127.0.0.1/moderation")
    location = Path(config.get_main_option("script_location") or "")
    assert (location / "env.py").is_file()
    assert (location / "versions" / "0001_create_verdicts.py").is_file()
    # The '%' of a URL-encoded password survives ConfigParser interpolation.
    assert config.get_main_option("sqlalchemy.url") == "postgresql+psycopg://user:p%40ss@127.0.0.1/moderation"
    assert config.config_file_name is None


def test_the_store_never_creates_tables(database_url: str) -> None:
    engine = create_engine_for(database_url)
    try:
        with pytest.raises(StorageError):
            VerdictStore(engine).count()
        assert "verdicts" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


# --- writes ---------------------------------------------------------------------------------------


def test_save_batch_round_trips_every_field(store: VerdictStore) -> None:
    verdicts = [make_verdict("ok-1"), make_error_verdict("err-1"), make_verdict("ok-2", flagged=False)]
    before = datetime.now(UTC) - timedelta(minutes=5)  # slack for clock differences with the server

    saved = store.save_batch(verdicts)

    assert saved == verdicts  # created_at is not part of equality
    assert [v.event_id for v in saved] == ["ok-1", "err-1", "ok-2"]
    for verdict in saved:
        assert verdict.uploaded_at.utcoffset() == timedelta(0)
        assert verdict.uploaded_at == datetime(2024, 11, 27, 16, 30, 15, 123456, tzinfo=UTC)
        assert verdict.created_at is not None and verdict.created_at.utcoffset() == timedelta(0)
        assert before <= verdict.created_at <= datetime.now(UTC) + timedelta(minutes=5)
    assert saved[0].scores == {"violence": 0.8123456789, "safe": 0.1876543211}
    assert saved[1].status is VerdictStatus.ERROR and saved[1].scores == {}
    assert saved[1].top_category is None and saved[1].load_ms is None
    fetched = [store.get(v.event_id) for v in verdicts]
    assert fetched == saved
    assert [v.created_at for v in fetched if v is not None] == [v.created_at for v in saved]


def test_redelivery_keeps_the_original_row_and_returns_it(store: VerdictStore) -> None:
    original = store.save_batch([make_verdict("e1"), make_verdict("e2")])
    redelivered = [
        make_verdict("e2", scores={"violence": 0.01, "safe": 0.99}, flagged=False, action="allow"),
        make_verdict("e3"),
        make_verdict("e1", policy_version="2099-01-01"),
    ]

    saved = store.save_batch(redelivered)

    assert [v.event_id for v in saved] == ["e2", "e3", "e1"]
    assert saved[0] == original[1] and saved[0].scores == {"violence": 0.8123456789, "safe": 0.1876543211}
    assert saved[0].created_at == original[1].created_at
    assert saved[2] == original[0] and saved[2].policy_version == "2024-11-01"
    assert saved[1] == redelivered[1]
    assert store.count() == 3


def test_duplicates_within_a_batch_collapse_to_the_first(store: VerdictStore) -> None:
    first = make_verdict("dup", score_ms=1.0)
    saved = store.save_batch([first, make_verdict("other"), make_verdict("dup", score_ms=2.0)])
    assert saved == [first, make_verdict("other"), first]
    assert store.count() == 2


def test_a_failing_batch_writes_nothing(store: VerdictStore) -> None:
    good = make_verdict("good")
    bad = make_verdict("bad", content_id=None)  # violates NOT NULL, on every database
    with pytest.raises(StorageError) as raised:
        store.save_batch([good, bad])
    assert isinstance(raised.value, ModerationError)
    assert isinstance(raised.value.__cause__, IntegrityError)
    assert store.count() == 0
    assert store.save_batch([good]) == [good]


def test_naive_datetimes_are_refused(store: VerdictStore) -> None:
    naive = make_verdict("naive", uploaded_at=datetime(2024, 11, 27, 12, 0))
    with pytest.raises(StorageError, match="timezone-aware"):
        store.save_batch([make_verdict("fine"), naive])
    assert store.count() == 0


def test_a_batch_larger_than_one_statement_is_saved_in_order(store: VerdictStore) -> None:
    verdicts = [make_verdict(f"bulk-{i:05d}", score_ms=float(i)) for i in range(3000)]
    store.save_batch(verdicts[:100])  # some already stored, so the read-back covers both kinds
    saved = store.save_batch(list(reversed(verdicts)))
    assert saved == list(reversed(verdicts))
    assert store.count() == 3000


def test_an_empty_batch_is_a_no_op(store: VerdictStore) -> None:
    assert store.save_batch([]) == []
    assert store.count() == 0


# --- reads ----------------------------------------------------------------------------------------


def test_recent_flagged_count_and_get(store: VerdictStore) -> None:
    assert store.count() == 0 and store.recent() == [] and store.flagged() == []
    store.save_batch([make_verdict("a"), make_verdict("b", flagged=False, action="allow")])
    store.save_batch([make_error_verdict("c"), make_verdict("d")])

    assert store.count() == 4
    assert [v.event_id for v in store.recent()] == ["d", "c", "b", "a"]
    assert [v.event_id for v in store.recent(limit=2)] == ["d", "c"]
    assert [v.event_id for v in store.flagged()] == ["d", "a"]
    assert [v.event_id for v in store.flagged(limit=1)] == ["d"]
    assert store.get("b") == make_verdict("b", flagged=False, action="allow")
    assert store.get("missing") is None
    with pytest.raises(ValueError):
        store.recent(limit=0)


def test_ping_succeeds_on_a_live_database(store: VerdictStore) -> None:
    store.ping()


# --- engines --------------------------------------------------------------------------------------


def test_ping_raises_storage_error_when_postgresql_is_unreachable() -> None:
    engine = create_engine_for("postgresql://postgres@127.0.0.1:1/test")  # nothing listens on port 1
    try:
        with pytest.raises(StorageError, match="unreachable") as raised:
            VerdictStore(engine).ping()
        assert isinstance(raised.value.__cause__, OperationalError)
    finally:
        engine.dispose()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgresql_urls_use_psycopg_3(scheme: str) -> None:
    engine = create_engine_for(f"{scheme}://postgres@127.0.0.1:5432/test")  # connects lazily
    try:
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_sqlite_engine_creates_the_directory_and_uses_wal(tmp_path: Path) -> None:
    database = tmp_path / "not-there-yet" / "verdicts.db"
    engine = create_engine_for(f"sqlite:///{database}")
    try:
        assert database.parent.is_dir()
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 5000
        assert database.is_file()
    finally:
        engine.dispose()


def test_a_missing_directory_tree_is_refused_not_created(tmp_path: Path) -> None:
    database = tmp_path / "typo" / "state" / "verdicts.db"  # one level is created (like data/), not two
    with pytest.raises(StorageError, match="does not exist"):
        create_engine_for(f"sqlite:///{database}")
    assert not (tmp_path / "typo").exists()


def test_an_impossible_sqlite_directory_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot create"):
        create_engine_for(f"sqlite:///{blocker / 'verdicts.db'}")


@pytest.mark.parametrize("url", ["mysql://root@127.0.0.1/moderation", "not a url"])
def test_unsupported_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        create_engine_for(url)


def test_identifiers_at_the_event_contract_limits_are_stored(store: VerdictStore) -> None:
    longest = make_verdict("e" * 255, content_id="c" * 255, source="s" * 128)
    assert store.save_batch([longest]) == [longest]


def test_a_nul_in_an_error_detail_is_stored_escaped(store: VerdictStore) -> None:
    """Decoder messages can quote file bytes; PostgreSQL text cannot hold NUL, so it is escaped."""
    verdict = make_verdict(
        "nul", status=VerdictStatus.ERROR, flagged=False, error_reason="decode_failed", error_detail="bad \x00 byte"
    )
    [stored] = store.save_batch([verdict])
    assert stored.error_detail == "bad \\x00 byte"


def test_a_rejected_row_is_a_permanent_storage_error(store: VerdictStore) -> None:
    with pytest.raises(StorageError) as info:
        store.save_batch([make_verdict("no-model", model_id=None)])  # type: ignore[arg-type] - NOT NULL
    assert info.value.permanent is True


def test_an_unreachable_database_is_not_a_permanent_storage_error(tmp_path: Path) -> None:
    engine = create_engine_for("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    try:
        with pytest.raises(StorageError) as info:
            VerdictStore(engine).save_batch([make_verdict("e")])
        assert info.value.permanent is False
    finally:
        engine.dispose()


# --- the shared plumbing: one error wrapping, one way to open the database -------------------------


def test_storage_errors_words_the_failure_and_keeps_the_cause() -> None:
    refused = IntegrityError("INSERT INTO verdicts ...", {}, Exception("NOT NULL constraint failed\nmore"))
    with pytest.raises(StorageError) as info, storage_errors("could not save 1 verdicts"):
        raise refused
    assert str(info.value) == "could not save 1 verdicts: Exception: NOT NULL constraint failed"
    assert info.value.__cause__ is refused and info.value.permanent is False  # reads never call it permanent
    with pytest.raises(StorageError) as info, storage_errors("saving", rejections_are_permanent=True):
        raise refused
    assert info.value.permanent is True
    with pytest.raises(ZeroDivisionError), storage_errors("not a database error"):
        raise ZeroDivisionError


def test_open_engine_disposes_and_refuses_an_unmigrated_schema_when_asked(sqlite_url: str) -> None:
    with open_engine(sqlite_url) as engine, engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
        pool = engine.pool
    assert engine.pool is not pool  # disposed: dispose() closes the pool's connections and replaces it
    with pytest.raises(ConfigurationError, match="run `moderation migrate` first"):
        with open_engine(sqlite_url, require_schema=True):
            pass
    upgrade(sqlite_url)
    with open_engine(sqlite_url, require_schema=True) as engine:
        assert VerdictStore(engine).count() == 0
