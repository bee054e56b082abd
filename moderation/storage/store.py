"""Writing and reading verdicts: the only code that talks SQL to the verdicts table.

Kafka delivers at least once, so the same event can arrive again after a rebalance or a crash
before the offset commit. `VerdictStore.save_batch` makes redelivery harmless: `event_id` is unique
and the insert is `ON CONFLICT (event_id) DO NOTHING`, so the first verdict recorded for an event is
the one that stays, and the caller gets that stored verdict back to act on (for example to publish
the review message that matches what the database says, not what this attempt computed).

Only SQLite (tests, single-host runs) and PostgreSQL (production) are supported: the idempotent
insert is written with their dialects' `insert()` (`moderation.storage.statements`). Engines come from
`moderation.storage.engine`; tables are created by migrations (`moderation.storage.migrate`), never here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Select, func, select, text, update

from moderation.review.routing import queue_row
from moderation.storage.errors import StorageError, storage_errors
from moderation.storage.models import (
    embeddings_table,
    policies_table,
    policy_heads_table,
    review_items_table,
    review_publications_table,
    shadow_verdicts_table,
    verdicts_table,
)
from moderation.storage.statements import chunks, dialect_insert
from moderation.verdict import ShadowVerdict, Verdict, VerdictStatus

if TYPE_CHECKING:
    from moderation.policy import LoadedPolicy

LAST_SEEN_EVERY_S = 60.0  # how often a store refreshes `policies.last_seen` for the policies it writes under


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
        "audited": verdict.audited,
        "pdq_hash": verdict.pdq_hash,
        "pdq_quality": verdict.pdq_quality,
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


def _policy_row(policy: LoadedPolicy) -> dict[str, Any]:
    return {
        "policy_hash": policy.sha256, "version": policy.version,
        "text": (policy.text or "").replace("\x00", ""), "meaning": policy.meaning(),
    }


def _head_rows(policy: LoadedPolicy) -> list[dict[str, Any]]:
    return [
        {"head_sha256": head.sha256, "category": category, "model_id": head.model_id, "data": head.data,
         "report": head.report}
        for category, head in policy.heads.items() if head.sha256 and head.data
    ]


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


def verdict_from_row(row: Mapping[str, Any]) -> Verdict:
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
        audited=bool(row["audited"]),
        pdq_hash=row.get("pdq_hash"),
        pdq_quality=row.get("pdq_quality"),
    )


class VerdictStore:
    """Idempotent writes and the few reads the service and its dashboard need, over one Engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert, self._max_parameters = dialect_insert(engine)
        self._policies_recorded: set[str] = set()  # hashes known to be in `policies`: not inserted again
        self._last_seen_at: dict[str, float] = {}  # hash -> when this store last refreshed its last_seen

    def _insert_ignoring_repeats(self, conn: Any, table: Any, rows: Sequence[dict[str, Any]], key: list[Any]) -> None:
        """Multi-row INSERT ... ON CONFLICT (key) DO NOTHING, in chunks that fit the parameter limit."""
        if not rows:
            return
        per_insert = max(1, self._max_parameters // len(rows[0]))
        for chunk in chunks(rows, per_insert):
            conn.execute(self._insert(table).values(list(chunk)).on_conflict_do_nothing(index_elements=key))

    @property
    def engine(self) -> Engine:
        return self._engine

    def save_batch(self, verdicts: Sequence[Verdict], policies: Sequence[LoadedPolicy] = ()) -> list[Verdict]:
        """Record `verdicts` in one transaction; return, in input order, what the database holds for each.

        An event_id already stored keeps its original row, and the original comes back; repeats of one
        event_id within the batch collapse to the first. The verdicts' new embeddings and shadow verdicts,
        and a review-queue item for each verdict that needs review, are written in the same transaction,
        equally idempotent. Either all of it is written or nothing. `policies` (those the batch was decided
        under, shadows included) are stored by hash in the same transaction the first time, so no verdict
        names a policy the database cannot show; their `last_seen` is refreshed about once a minute after.
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
        new_policies = {p.sha256: _policy_row(p) for p in policies if p.sha256 not in self._policies_recorded}
        new_heads = {row["head_sha256"]: row for p in policies if p.sha256 in new_policies for row in _head_rows(p)}
        queued = [queue_row(v) for v in first.values() if v.needs_review]
        table = verdicts_table
        stored: dict[str, Verdict] = {}
        saving = storage_errors(f"could not save {len(verdicts)} verdicts", rejections_are_permanent=True)
        with saving, self._engine.begin() as conn:
            # DO NOTHING on a known hash takes no row lock: workers never queue behind each other here.
            self._insert_ignoring_repeats(conn, policies_table, list(new_policies.values()),
                                          [policies_table.c.policy_hash])
            self._insert_ignoring_repeats(conn, policy_heads_table, list(new_heads.values()),
                                          [policy_heads_table.c.head_sha256])
            self._insert_ignoring_repeats(conn, table, rows, [table.c.event_id])
            self._insert_ignoring_repeats(
                conn, embeddings_table, list(embeddings.values()),
                [embeddings_table.c.model_id, embeddings_table.c.image_sha256],
            )
            self._insert_ignoring_repeats(
                conn, shadow_verdicts_table, shadows,
                [shadow_verdicts_table.c.event_id, shadow_verdicts_table.c.policy_hash],
            )
            # The review queue's items commit with their verdicts: no flagged verdict is ever missing
            # from the queue. A repeat keeps the first item, as it keeps the first verdict.
            self._insert_ignoring_repeats(conn, review_items_table, queued, [review_items_table.c.event_id])
            # Read back inside the same transaction: rows we inserted and rows that were already
            # there (including ones a concurrent writer committed while we waited on its lock).
            for id_chunk in chunks(event_ids, self._max_parameters):
                result = conn.execute(select(table).where(table.c.event_id.in_(id_chunk)))
                for row in result.mappings():
                    stored[row["event_id"]] = verdict_from_row(row)
        missing = [event_id for event_id in event_ids if event_id not in stored]
        if missing:  # cannot happen unless something deletes rows under us; never return a partial answer
            raise StorageError(f"verdicts missing right after saving them: {missing[:5]}")
        self._policies_recorded.update(new_policies)
        self._refresh_last_seen([p.sha256 for p in policies])
        return [stored[verdict.event_id] for verdict in verdicts]

    def _refresh_last_seen(self, hashes: Sequence[str]) -> None:
        """`policies.last_seen` = now for the hashes this store has not refreshed for a minute: one small
        UPDATE a minute per worker, outside the batch's transaction, so it never holds a row lock long."""
        now = time.monotonic()
        due = [
            h for h in dict.fromkeys(hashes)
            if h not in self._last_seen_at or now - self._last_seen_at[h] >= LAST_SEEN_EVERY_S
        ]
        if not due:
            return
        t = policies_table
        with storage_errors("could not refresh the policies' last_seen"), self._engine.begin() as conn:
            conn.execute(update(t).where(t.c.policy_hash.in_(due)).values(last_seen=func.now()))
        self._last_seen_at.update(dict.fromkeys(due, now))

    def reviews_published(self, event_ids: Sequence[str]) -> set[str]:
        """Which of `event_ids` already had their review message published and acknowledged."""
        table = review_publications_table
        found: set[str] = set()
        with storage_errors("could not read review publications"), self._engine.connect() as conn:
            for id_chunk in chunks(list(dict.fromkeys(event_ids)), self._max_parameters):
                found.update(conn.execute(select(table.c.event_id).where(table.c.event_id.in_(id_chunk))).scalars())
        return found

    def mark_reviews_published(self, event_ids: Sequence[str]) -> None:
        """Record that these verdicts' review messages were acknowledged by the brokers (idempotent)."""
        rows = [{"event_id": event_id} for event_id in dict.fromkeys(event_ids)]
        table = review_publications_table
        with storage_errors(f"could not record {len(rows)} review publications"), self._engine.begin() as conn:
            self._insert_ignoring_repeats(conn, table, rows, [table.c.event_id])

    def get(self, event_id: str) -> Verdict | None:
        """The verdict stored for `event_id`, or None."""
        found = self._fetch(select(verdicts_table).where(verdicts_table.c.event_id == event_id))
        return found[0] if found else None

    def count(self) -> int:
        """How many verdicts are stored."""
        with storage_errors("could not count verdicts"), self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(verdicts_table)).scalar_one())

    def recent(self, limit: int = 50) -> list[Verdict]:
        """The newest verdicts, newest first."""
        return self._fetch(self._newest_first(select(verdicts_table), limit))

    def flagged(self, limit: int = 50) -> list[Verdict]:
        """The newest flagged verdicts, newest first (served by the (flagged, created_at) index)."""
        query = select(verdicts_table).where(verdicts_table.c.flagged)
        return self._fetch(self._newest_first(query, limit))

    def ping(self) -> None:
        """Raise StorageError unless the database answers `SELECT 1`: for readiness probes."""
        with storage_errors("database unreachable"), self._engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    @staticmethod
    def _newest_first(query: Select[Any], limit: int) -> Select[Any]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        # created_at has one value per transaction (PostgreSQL) or per second (SQLite): id breaks ties.
        return query.order_by(verdicts_table.c.created_at.desc(), verdicts_table.c.id.desc()).limit(limit)

    def _fetch(self, query: Select[Any]) -> list[Verdict]:
        with storage_errors("could not read verdicts"), self._engine.connect() as conn:
            return [verdict_from_row(row) for row in conn.execute(query).mappings()]
