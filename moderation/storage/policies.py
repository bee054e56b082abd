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
from moderation.storage.models import policies_table


@dataclass(frozen=True)
class StoredPolicy:
    policy_hash: str
    version: str
    text: str
    meaning: dict[str, Any]
    first_seen: datetime
    last_seen: datetime

    def loaded(self) -> LoadedPolicy | None:
        """The policy parsed again from its stored text (None if this release cannot read it any more)."""
        try:
            return parse_policy(self.text, f"<stored policy {self.policy_hash[:12]}>")
        except PolicyError:
            return None


class PolicyStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get(self, policy_hash: str) -> StoredPolicy | None:
        t = policies_table
        with storage_errors("could not read stored policies"), self._engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.policy_hash == policy_hash)).mappings().first()
        return None if row is None else StoredPolicy(**dict(row))

    def all(self, limit: int = 500) -> list[StoredPolicy]:
        """Newest first (by when they were last in force)."""
        t = policies_table
        query = select(t).order_by(t.c.last_seen.desc(), t.c.policy_hash).limit(limit)
        with storage_errors("could not read stored policies"), self._engine.connect() as conn:
            return [StoredPolicy(**dict(row)) for row in conn.execute(query).mappings()]
