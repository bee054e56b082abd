"""Which policy hashes were recorded under a policy version, to catch an edit that kept its version.

A verdict names its policy by `policy_version` (what people read) and `policy_hash` (what it meant).
Two hashes under one version make every report by version ambiguous, so `moderation policy check`
(and a worker at start-up) compares the files at hand with what the database recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, func, select

from moderation.policy import LoadedPolicy
from moderation.storage.errors import storage_errors
from moderation.storage.models import shadow_verdicts_table, verdicts_table


@dataclass(frozen=True)
class VersionConflict:
    """A policy file whose version the database recorded with other content (other hashes)."""

    policy: LoadedPolicy
    recorded: dict[str, int]  # other hash -> verdicts and shadow verdicts recorded under it

    def message(self) -> str:
        others = ", ".join(f"{policy_hash[:16]} ({rows:,} verdicts)" for policy_hash, rows in self.recorded.items())
        return (
            f"{self.policy.path}: version {self.policy.version!r} has content {self.policy.sha256[:16]}, but the "
            f"database recorded verdicts under that version with other content: {others}. Bump `version` "
            f"so reports by version stay unambiguous"
        )


def recorded_hashes(engine: Engine, versions: Iterable[str]) -> dict[str, dict[str, int]]:
    """For each of `versions`: every policy hash recorded under it (verdicts and shadow verdicts), with rows."""
    wanted = sorted(set(versions))
    found: dict[str, dict[str, int]] = {}
    if not wanted:
        return found
    with storage_errors("could not read recorded policy versions"), engine.connect() as conn:
        for table in (verdicts_table, shadow_verdicts_table):
            query = (
                select(table.c.policy_version, table.c.policy_hash, func.count())
                .where(table.c.policy_version.in_(wanted))
                .group_by(table.c.policy_version, table.c.policy_hash)
            )
            for version, policy_hash, rows in conn.execute(query):
                hashes = found.setdefault(str(version), {})
                hashes[str(policy_hash)] = hashes.get(str(policy_hash), 0) + int(rows)
    return found


def version_conflicts(engine: Engine, policies: Iterable[LoadedPolicy]) -> list[VersionConflict]:
    """The policies whose version the database recorded with another hash; empty when all agree."""
    policies = list(policies)
    recorded = recorded_hashes(engine, (p.version for p in policies))
    conflicts = []
    for policy in policies:
        others = {h: n for h, n in recorded.get(policy.version, {}).items() if h != policy.sha256}
        if others:
            conflicts.append(VersionConflict(policy, others))
    return conflicts
