"""Known-content banks (moderation/storage/banks.py, `moderation bank ...`) on SQLite and PostgreSQL: banks
and entries, hashes from image files and from CSV (malformed lines refused by number), disable, enable,
remove and export, every change in the audit log."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import Engine

from moderation.bank_files import read_hash_csv
from moderation.perceptual import pdq_hash
from moderation.storage import create_engine_for, upgrade
from moderation.storage.audit_log import AuditLog
from moderation.storage.banks import BankError, BankStore, NewEntry
from tests.support.cli import moderation
from tests.support.images import photo

HASHES = [pdq_hash(photo((300, 200), seed)).hex for seed in range(4)]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


def test_banks_and_entries_change_with_their_audit_rows(engine: Engine) -> None:
    banks = BankStore(engine)
    bank = banks.create("takedowns", "block", "nsfw", by="lena")
    assert (bank.action, bank.max_distance, bank.enabled) == ("block", 31, True)
    with pytest.raises(BankError, match="exists already"):
        banks.create("takedowns", "review", "nsfw", by="lena")
    with pytest.raises(BankError, match="blocks or sends to review"):
        banks.create("other", "delete", "nsfw", by="lena")
    first = banks.add("takedowns", [NewEntry(h.upper(), f"case {i}") for i, h in enumerate(HASHES)], by="lena")
    again = banks.add("takedowns", [NewEntry(HASHES[0])], by="rita")
    assert (first.added, first.already, again.added, again.already) == (4, 0, 0, 1)
    with pytest.raises(BankError, match="entry 2: a PDQ hash is 64 hex characters, not 3"):
        banks.add("takedowns", [NewEntry(HASHES[0]), NewEntry("abc")], by="rita")
    before = {e.pdq_hash: e.changed_at for e in banks.entries("takedowns")}
    assert banks.set_enabled("takedowns", False, [HASHES[1]], by="lena") == 1
    assert banks.remove("takedowns", [HASHES[2]], by="lena") == 1
    entries = {e.pdq_hash: e for e in banks.entries("takedowns")}
    assert set(entries) == {HASHES[0], HASHES[1], HASHES[3]}  # the removed one is gone from the list
    assert not entries[HASHES[1]].enabled and entries[HASHES[1]].changed_at >= before[HASHES[1]]
    assert [e.pdq_hash for e in banks.entries("takedowns", include_disabled=False)] == [HASHES[0], HASHES[3]]
    listed = banks.get("takedowns")
    assert listed is not None and (listed.entries, listed.disabled) == (2, 1)
    assert banks.set_enabled("takedowns", False, by="lena") == 1
    assert not banks.get("takedowns").enabled  # type: ignore[union-attr]
    with pytest.raises(BankError, match="no bank named 'nope' \\(banks: takedowns\\)"):
        banks.entries("nope")
    actions = [entry.action for entry in AuditLog(engine).entries(limit=20)]
    assert actions[::-1] == ["bank_create", "bank_add", "bank_add", "bank_disable", "bank_remove", "bank_disable"]


def test_a_hash_csv_is_read_with_or_without_a_header_and_refused_whole_with_line_numbers(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text(f"{HASHES[0]},first\n# a comment\n\n{HASHES[1]}\n")
    read = read_hash_csv(plain, source="program-x")
    assert [(e.pdq_hash, e.label, e.source) for e in read.entries] == [
        (HASHES[0], "first", "program-x"), (HASHES[1], "", "program-x")]
    exported = tmp_path / "threatexchange.csv"
    exported.write_text(f"signal_type,signal_value,quality,tags\npdq,{HASHES[2]},100,abuse\npdq,{HASHES[3]},12,flat\n")
    read = read_hash_csv(exported)
    assert [(e.pdq_hash, e.label) for e in read.entries] == [(HASHES[2], "abuse")] and read.low_quality == 1
    broken = tmp_path / "broken.csv"
    broken.write_text(f"pdq_hash,label\n{HASHES[0]},ok\nnot-a-hash,x\n{HASHES[1][:-1]},short\n{HASHES[2]},ok\n")
    with pytest.raises(BankError) as refused:
        read_hash_csv(broken)
    message = str(refused.value)
    assert "2 malformed lines, nothing imported" in message
    assert "line 3: a PDQ hash is 64 hex characters, not 10" in message and "line 4:" in message


def test_the_bank_commands_as_an_operator_runs_them(sqlite_url: str, tmp_path: Path) -> None:
    upgrade(sqlite_url)
    env = {"MODERATION_DATABASE__URL": sqlite_url}
    created = moderation("bank", "create", "takedowns", "--action", "block", "--category", "nsfw", env=env)
    assert created.returncode == 0, created.stderr
    assert "takedowns: block, category nsfw, match distance 31" in created.stdout
    taken = moderation("bank", "create", "takedowns", "--action", "block", "--category", "nsfw", env=env)
    assert taken.returncode == 2 and "exists already" in taken.stderr and "Traceback" not in taken.stderr
    pictures = []
    for seed in range(2):
        path = tmp_path / f"photo-{seed}.jpg"
        photo((640, 480), seed).save(path, "JPEG", quality=90)
        pictures.append(path)
    Image.new("RGB", (300, 300), (128, 128, 128)).save(tmp_path / "flat.png")
    added = moderation("bank", "add", "takedowns", *map(str, pictures), str(tmp_path / "flat.png"),
                       "--source", "takedown-42", env=env)
    assert added.returncode == 1, added.stderr  # one file refused, the others added
    assert "flat.png: too flat to match (PDQ quality 0" in added.stderr
    assert "2 added, 0 already there, 1 files skipped" in added.stdout
    broken = tmp_path / "broken.csv"
    broken.write_text(f"{HASHES[0]},a\nzz{HASHES[1][2:]},b\n")
    refused = moderation("bank", "import", "takedowns", str(broken), env=env)
    assert refused.returncode == 2 and "line 2: a PDQ hash is hex characters only" in refused.stderr
    good = tmp_path / "good.csv"
    good.write_text("\n".join(f"{h},shared {i}" for i, h in enumerate(HASHES)) + "\n")
    imported = moderation("bank", "import", "takedowns", str(good), "--source", "program-x", env=env)
    assert imported.returncode == 0 and "4 added, 0 already there" in imported.stdout
    disabled = moderation("bank", "disable", "takedowns", "--hash", HASHES[0], env=env)
    assert disabled.returncode == 0 and "1 entries disabled" in disabled.stdout
    removed = moderation("bank", "remove", "takedowns", "--hash", HASHES[1], env=env)
    assert removed.returncode == 0 and "1 entries removed" in removed.stdout
    listed = moderation("bank", "list", env=env)
    assert "takedowns\tblock\tnsfw\t31\tenabled\t4\t1" in listed.stdout  # 6 added, 1 disabled, 1 removed
    exported = moderation("bank", "export", "takedowns", env=env)
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == 4 and HASHES[0] not in {r["pdq_hash"] for r in rows}
    assert {r["source"] for r in rows} == {"takedown-42", "program-x"}
    out = tmp_path / "export.csv"
    assert moderation("bank", "export", "takedowns", "--out", str(out), "--include-disabled", env=env).returncode == 0
    assert moderation("bank", "create", "copy", "--action", "review", "--category", "nsfw", env=env).returncode == 0
    round_trip = moderation("bank", "import", "copy", str(out), env=env)
    assert round_trip.returncode == 0 and "5 added" in round_trip.stdout
    unknown = moderation("bank", "list", "nope", env=env)
    assert unknown.returncode == 2 and "no bank named 'nope'" in unknown.stderr
