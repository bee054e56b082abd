"""Schema compatibility: a release runs on its own head, or on a newer schema that says it may (rollbacks).

A newer release is simulated the way its `moderation migrate` leaves the database: an Alembic revision
these scripts do not know, and that revision's row in `schema_compatibility`.
"""

from __future__ import annotations

import importlib.util

import pytest
import sqlalchemy as sa

from moderation.exceptions import ConfigurationError
from moderation.storage import create_engine_for, upgrade
from moderation.storage.migrate import (
    SchemaNewerThanCode,
    head_revision,
    known_revisions,
    recorded_compatibility,
    require_compatible,
    script_location,
)
from tests.support.cli import moderation

NEWER = "9999"


def migrated_by_a_newer_release(url: str, compatible_with: str | None) -> None:
    upgrade(url)
    engine = create_engine_for(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": NEWER})
            if compatible_with is not None:
                conn.execute(
                    sa.text("INSERT INTO schema_compatibility (revision, compatible_with) VALUES (:r, :c)"),
                    {"r": NEWER, "c": compatible_with},
                )
    finally:
        engine.dispose()


def test_the_head_and_only_the_head_of_this_release_needs_no_migration(database_url: str) -> None:
    with pytest.raises(ConfigurationError, match="revision none, expected .*run `moderation migrate` first"):
        require_compatible(database_url)
    upgrade(database_url, "0002")
    with pytest.raises(ConfigurationError, match="revision 0002, expected .*run `moderation migrate` first"):
        require_compatible(database_url)
    upgrade(database_url)
    require_compatible(database_url)


def test_a_newer_schema_marked_compatible_runs_this_release_and_migrate_leaves_it(database_url: str) -> None:
    migrated_by_a_newer_release(database_url, compatible_with=head_revision())
    require_compatible(database_url)  # the rolled-back workers start
    result = moderation("migrate", env={"MODERATION_DATABASE__URL": database_url})
    assert result.returncode == 0, result.stderr
    assert f"schema is at revision {NEWER}, from a newer release; it is marked compatible" in result.stdout
    assert "nothing to do" in result.stdout


@pytest.mark.parametrize("compatible_with", ["5000", None], ids=["needs-newer-code", "no-record"])
def test_a_newer_incompatible_schema_is_one_clear_refusal(database_url: str, compatible_with: str | None) -> None:
    migrated_by_a_newer_release(database_url, compatible_with=compatible_with)
    with pytest.raises(SchemaNewerThanCode, match=f"cannot run on it.*--revision {head_revision()}") as caught:
        require_compatible(database_url)
    assert caught.value.compatible is False
    result = moderation("migrate", env={"MODERATION_DATABASE__URL": database_url})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database schema is at revision 9999"), result.stderr
    assert "Can't locate revision" not in result.stderr and "Traceback" not in result.stderr


def test_upgrading_a_database_from_before_the_table_records_the_compatibility(database_url: str) -> None:
    upgrade(database_url, "0002")
    upgrade(database_url)
    assert recorded_compatibility(database_url, "0003") == "0002"
    assert recorded_compatibility(database_url, head_revision() or "") is not None


def test_every_migration_declares_a_compatibility_no_older_than_the_one_before() -> None:
    """Cumulative: code that cannot run on revision N cannot run on N+1 either, unless N+1 says so."""
    known = known_revisions()
    previous = None
    for path in sorted((script_location() / "versions").glob("[0-9]*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        declared = getattr(module, "compatible_with", module.revision)
        assert known.index(declared) <= known.index(module.revision), path.name
        if module.revision >= "0003":  # from 0003 on, every migration records it in the database
            assert "declare_compatibility(" in path.read_text(), path.name
        if previous is not None:
            assert known.index(declared) >= known.index(previous), path.name
        previous = declared


def test_migrate_to_an_older_revision_downgrades_for_a_rollback(database_url: str) -> None:
    upgrade(database_url)
    result = moderation("migrate", "--revision", "0002", env={"MODERATION_DATABASE__URL": database_url})
    assert result.returncode == 0, result.stderr
    assert "schema at revision 0002" in result.stdout
    engine = create_engine_for(database_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert "review_publications" not in tables and "schema_compatibility" not in tables and "verdicts" in tables
