"""Reading the policies stored by hash: the exact text and meaning any verdict was decided under.

Rows are written by `VerdictStore.save_batch` with the first verdicts decided under each policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from moderation.exceptions import PolicyError
from moderation.policy import LoadedPolicy, parse_policy
from moderation.storage.errors import storage_errors
from moderation.storage.models import policies_table, policy_heads_table


@dataclass(frozen=True)
class StoredPolicy:
    policy_hash: str
    version: str
    text: str
    meaning: dict[str, Any]
    first_seen: datetime
    last_seen: datetime

    heads: tuple[StoredHead, ...] = ()

    def loaded(self) -> LoadedPolicy | None:
        """The policy parsed again from its stored text and heads (None if this release cannot read it any
        more, or a head it pins is missing)."""
        stored = {head.head_sha256: head.data for head in self.heads}
        try:
            return parse_policy(self.text, f"<stored policy {self.policy_hash[:12]}>", stored_heads=stored)
        except PolicyError:
            return None


@dataclass(frozen=True)
class StoredHead:
    """A trained head a stored policy pins (moderation/heads.py), with `policy train`'s report."""

    head_sha256: str
    category: str
    model_id: str
    data: bytes
    report: dict[str, Any] | None
    first_seen: datetime


class PolicyStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get(self, policy_hash: str) -> StoredPolicy | None:
        """The policy stored under `policy_hash`, with the heads it pins."""
        t = policies_table
        with storage_errors("could not read stored policies"), self._engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.policy_hash == policy_hash)).mappings().first()
            if row is None:
                return None
            pins = [c["head"]["sha256"] for c in (row["meaning"].get("categories") or {}).values()
                    if isinstance(c, dict) and isinstance(c.get("head"), dict) and "sha256" in c["head"]]
            h = policy_heads_table
            heads = conn.execute(select(h).where(h.c.head_sha256.in_(pins))).mappings().all() if pins else []
        return StoredPolicy(**dict(row), heads=tuple(StoredHead(**dict(head)) for head in heads))

    def all(self, limit: int = 500) -> list[StoredPolicy]:
        """Newest first (by when they were last in force)."""
        t = policies_table
        query = select(t).order_by(t.c.last_seen.desc(), t.c.policy_hash).limit(limit)
        with storage_errors("could not read stored policies"), self._engine.connect() as conn:
            return [StoredPolicy(**dict(row)) for row in conn.execute(query).mappings()]
