"""Reading shadow verdicts beside the verdicts acted on, for `moderation policy shadow-report`.

A shadow policy is decided on live traffic and recorded, never acted on; comparing its rows with the
verdicts of the same events says what switching to it would have changed, on the traffic it saw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, Row, func, select

from moderation.storage.errors import storage_errors
from moderation.storage.models import shadow_verdicts_table, verdicts_table
from moderation.storage.statements import stream_chunks


@dataclass(frozen=True)
class ShadowChunk:
    content_ids: list[str]
    before: tuple[np.ndarray, np.ndarray, np.ndarray]  # the verdicts acted on: flagged, top category, action
    after: tuple[np.ndarray, np.ndarray, np.ndarray]  # the shadow's
    uncertain_after: np.ndarray


class ShadowStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def versions(self) -> list[tuple[str, str, int]]:
        """(policy_version, policy_hash, rows) of every shadow policy recorded, most rows first."""
        s = shadow_verdicts_table
        query = (
            select(s.c.policy_version, s.c.policy_hash, func.count())
            .group_by(s.c.policy_version, s.c.policy_hash)
            .order_by(func.count().desc())
        )
        with storage_errors("could not read shadow verdicts"), self._engine.connect() as conn:
            return [(str(v), str(h), int(n)) for v, h, n in conn.execute(query)]

    def scan(
        self, policy_version: str, since: datetime | None = None, chunk_size: int = 100_000
    ) -> Iterator[ShadowChunk]:
        """The shadow verdicts of one shadow policy version beside the verdicts acted on, in chunks."""
        s, v = shadow_verdicts_table, verdicts_table
        conditions = [s.c.policy_version == policy_version]
        if since is not None:
            conditions.append(v.c.created_at >= since)
        query = (
            select(v.c.content_id, v.c.flagged, v.c.top_category, v.c.action,
                   s.c.flagged, s.c.top_category, s.c.action, s.c.uncertain)
            .select_from(s.join(v, v.c.event_id == s.c.event_id))
            .where(*conditions)
        )
        yield from stream_chunks(self._engine, query, chunk_size, _chunk, "could not read shadow verdicts")


def _chunk(rows: Sequence[Row[Any]]) -> ShadowChunk:
    columns = list(zip(*rows, strict=True))
    return ShadowChunk(
        content_ids=list(columns[0]),  # type: ignore[arg-type]
        before=(
            np.array(columns[1], dtype=bool),
            np.array(columns[2], dtype=object),
            np.array(columns[3], dtype=object),
        ),
        after=(
            np.array(columns[4], dtype=bool),
            np.array(columns[5], dtype=object),
            np.array(columns[6], dtype=object),
        ),
        uncertain_after=np.array(columns[7], dtype=bool),
    )
