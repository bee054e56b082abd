"""Known-content banks in the database: banks, their PDQ hash entries, and every change to them audited.

An entry is never deleted: disabling stops it matching, removing also hides it from lists and exports,
and both bump `changed_at`, which is what a worker polls to apply edits live (a deleted row would give
it nothing to notice). Every change writes its audit row in the same transaction (moderation/storage/
audit_log.py), so the console's audit log shows who added, disabled or removed what, and when.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import ColumnElement, Engine, func, insert, select, update

from moderation.exceptions import ModerationError
from moderation.perceptual import MATCH_DISTANCE, PDQ_BITS, parse_pdq
from moderation.storage.audit_log import record
from moderation.storage.errors import storage_errors
from moderation.storage.models import bank_entries_table, banks_table
from moderation.storage.statements import chunks

BANK_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ACTIONS = ("block", "review")
_TEXT_LIMIT = 200


class BankError(ModerationError):
    """A bank change that cannot be made: an unknown bank, a name taken, a bad hash or setting."""


@dataclass(frozen=True)
class Bank:
    id: int
    name: str
    action: str
    category: str
    max_distance: int
    enabled: bool
    created_by: str
    created_at: datetime
    entries: int = 0  # enabled entries
    disabled: int = 0  # disabled entries, removed ones not counted


@dataclass(frozen=True)
class BankEntry:
    id: int
    bank_id: int
    pdq_hash: str
    label: str
    source: str
    added_by: str
    added_at: datetime
    enabled: bool
    removed_at: datetime | None
    changed_at: datetime


@dataclass(frozen=True)
class NewEntry:
    pdq_hash: str  # hex, checked by `BankStore.add`
    label: str = ""
    source: str = ""


@dataclass(frozen=True)
class AddResult:
    added: int
    already: int  # the bank had these hashes (enabled or not): left as they were


def _clean(text: str) -> str:
    return text.replace("\x00", "").strip()[:_TEXT_LIMIT]


class BankStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, name: str, action: str, category: str, *, max_distance: int = MATCH_DISTANCE, by: str) -> Bank:
        if not BANK_NAME.match(name):
            raise BankError(f"bank name {name!r}: lower-case letters, digits, '_', '.', '-', at most 64, not first")
        if action not in ACTIONS:
            raise BankError(f"action {action!r}: a bank blocks or sends to review ({', '.join(ACTIONS)})")
        if not re.match(r"^[a-z][a-z0-9_]{0,62}$", category):
            raise BankError(f"category {category!r}: a policy-style category name (lower_snake_case)")
        if not 0 <= max_distance <= PDQ_BITS // 2:
            raise BankError(f"distance {max_distance}: 0 to {PDQ_BITS // 2} bits (PDQ recommends {MATCH_DISTANCE})")
        t = banks_table
        with storage_errors("could not create the bank"), self._engine.begin() as conn:
            if conn.execute(select(t.c.id).where(t.c.name == name)).first() is not None:
                raise BankError(f"a bank named {name!r} exists already")
            conn.execute(insert(t).values(name=name, action=action, category=category, max_distance=max_distance,
                                          created_by=by))
            record(conn, by, "bank_create", detail={"bank": name, "action": action, "category": category,
                                                     "max_distance": max_distance})
        found = self.get(name)
        assert found is not None
        return found

    def get(self, name: str) -> Bank | None:
        """One bank with its entry counts (counted for it alone), or None."""
        banks = self._read(banks_table.c.name == name)
        return banks[0] if banks else None

    def all(self) -> list[Bank]:
        """Every bank with its entry counts, by name."""
        return self._read(None)

    def _read(self, where: ColumnElement[bool] | None) -> list[Bank]:
        t, e = banks_table, bank_entries_table
        query = select(t).order_by(t.c.name)
        with storage_errors("could not read the banks"), self._engine.connect() as conn:
            banks = conn.execute(query if where is None else query.where(where)).mappings().all()
            counts = (
                select(e.c.bank_id, e.c.enabled, func.count().label("n"))
                .where(e.c.removed_at.is_(None), e.c.bank_id.in_([row["id"] for row in banks]))
                .group_by(e.c.bank_id, e.c.enabled)
            )
            tallies: dict[tuple[int, bool], int] = {
                (row.bank_id, bool(row.enabled)): int(row.n) for row in conn.execute(counts)
            } if banks else {}
        return [Bank(**dict(row), entries=tallies.get((row["id"], True), 0),
                     disabled=tallies.get((row["id"], False), 0)) for row in banks]

    def _bank(self, name: str) -> int:
        """The id of the bank a change names, without counting its entries; BankError naming the banks
        there are when it does not exist."""
        t = banks_table
        with storage_errors("could not read the banks"), self._engine.connect() as conn:
            found = conn.execute(select(t.c.id).where(t.c.name == name)).scalar()
            if found is None:
                known = ", ".join(conn.execute(select(t.c.name).order_by(t.c.name)).scalars()) or "none yet"
                raise BankError(f"no bank named {name!r} (banks: {known})")
        return int(found)

    def add(self, name: str, entries: Sequence[NewEntry], *, by: str) -> AddResult:
        """Add hashes to a bank in one transaction (all or none): a bad hash is refused before anything
        is written; hashes the bank has already are left as they are."""
        bank_id = self._bank(name)
        rows: dict[str, NewEntry] = {}
        for number, entry in enumerate(entries, start=1):
            try:
                value = parse_pdq(entry.pdq_hash).hex()
            except ValueError as exc:
                raise BankError(f"entry {number}: {exc}") from None
            rows.setdefault(value, entry)
        e = bank_entries_table
        with storage_errors("could not add to the bank"), self._engine.begin() as conn:
            known: set[str] = set()
            for chunk in chunks(list(rows), 500):
                known.update(conn.execute(
                    select(e.c.pdq_hash).where(e.c.bank_id == bank_id, e.c.pdq_hash.in_(chunk))
                ).scalars())
            new = [{"bank_id": bank_id, "pdq_hash": value, "label": _clean(entry.label),
                    "source": _clean(entry.source), "added_by": by}
                   for value, entry in rows.items() if value not in known]
            for chunk in chunks(new, 500):
                conn.execute(insert(e), chunk)
            record(conn, by, "bank_add", detail={"bank": name, "added": len(new), "already": len(rows) - len(new),
                                                  "hashes": [row["pdq_hash"] for row in new[:20]]})
        return AddResult(len(new), len(rows) - len(new))

    def set_enabled(self, name: str, enabled: bool, hashes: Iterable[str] = (), *, by: str) -> int:
        """Enable or disable a whole bank (no `hashes`) or some of its entries; returns what changed."""
        bank_id = self._bank(name)
        values = [parse_pdq(h).hex() for h in hashes]
        now = datetime.now(timezone.utc)
        action = "bank_enable" if enabled else "bank_disable"
        with storage_errors("could not change the bank"), self._engine.begin() as conn:
            if not values:
                changed = conn.execute(
                    update(banks_table).where(banks_table.c.id == bank_id, banks_table.c.enabled != enabled)
                    .values(enabled=enabled)
                ).rowcount
                # Bump the entries too: a worker polling changes sees the bank's switch.
                conn.execute(update(bank_entries_table).where(bank_entries_table.c.bank_id == bank_id)
                             .values(changed_at=now))
            else:
                e = bank_entries_table
                changed = conn.execute(
                    update(e).where(e.c.bank_id == bank_id, e.c.pdq_hash.in_(values), e.c.removed_at.is_(None),
                                    e.c.enabled != enabled)
                    .values(enabled=enabled, changed_at=now)
                ).rowcount
            record(conn, by, action, detail={"bank": name, "hashes": values[:20], "changed": changed})
        return int(changed)

    def remove(self, name: str, hashes: Iterable[str], *, by: str) -> int:
        """Remove entries: they stop matching and leave lists and exports (the rows stay, marked)."""
        bank_id = self._bank(name)
        values = [parse_pdq(h).hex() for h in hashes]
        if not values:
            raise BankError("name the hashes to remove (a bank is disabled, not removed)")
        now = datetime.now(timezone.utc)
        e = bank_entries_table
        with storage_errors("could not change the bank"), self._engine.begin() as conn:
            changed = conn.execute(
                update(e).where(e.c.bank_id == bank_id, e.c.pdq_hash.in_(values), e.c.removed_at.is_(None))
                .values(enabled=False, removed_at=now, changed_at=now)
            ).rowcount
            record(conn, by, "bank_remove", detail={"bank": name, "hashes": values[:20], "changed": changed})
        return int(changed)

    def entries(self, name: str, *, include_disabled: bool = True) -> list[BankEntry]:
        """A bank's entries (removed ones left out), oldest first."""
        bank_id = self._bank(name)
        e = bank_entries_table
        query = select(e).where(e.c.bank_id == bank_id, e.c.removed_at.is_(None)).order_by(e.c.id)
        if not include_disabled:
            query = query.where(e.c.enabled)
        with storage_errors("could not read the bank"), self._engine.connect() as conn:
            return [BankEntry(**dict(row)) for row in conn.execute(query).mappings()]
