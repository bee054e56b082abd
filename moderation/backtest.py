"""Backtest: what a candidate policy would have decided over past traffic, from stored embeddings.

The image embedding does not depend on the policy, so re-deciding a week of traffic needs no image,
no GPU and no image tower: only the candidate's text embeddings (a few prompts through the text tower)
and, per chunk of stored embeddings, one matrix product and the vectorised decision rule. The report
compares the candidate with the verdicts as they were acted on, per category: what it would newly flag,
what it would stop flagging, with example content ids to look at.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from moderation.category_scores import PolicyText, score_embeddings
from moderation.decision import decide_many
from moderation.policy import LoadedPolicy
from moderation.storage.embeddings import EmbeddingChunk
from moderation.storage.shadows import ShadowChunk

_SCORE_CHUNK = 65_536  # rows per matrix product: bounds the float32 copy of float16 embeddings


@dataclass
class CategoryChange:
    """For one category: items the candidate flags under it that were not flagged, and the reverse."""

    category: str
    flagged_before: int = 0  # acted-on verdicts with this top category and flagged
    flagged_after: int = 0  # candidate verdicts with this top category and flagged
    newly_flagged: int = 0
    no_longer_flagged: int = 0
    examples_newly_flagged: list[str] = field(default_factory=list)  # content ids
    examples_no_longer_flagged: list[str] = field(default_factory=list)


@dataclass
class BacktestReport:
    policy_version: str
    policy_hash: str
    over: str = "stored embeddings"  # what was re-decided: stored embeddings, or live traffic in shadow
    items: int = 0
    flagged_before: int = 0
    flagged_after: int = 0
    newly_flagged: int = 0
    no_longer_flagged: int = 0
    recategorised: int = 0  # flagged both times, under another category or with another action
    uncertain_after: int = 0
    categories: dict[str, CategoryChange] = field(default_factory=dict)
    read_s: float = 0.0  # fetching rows from the database
    score_s: float = 0.0  # scoring and deciding

    @property
    def items_per_s(self) -> float:
        total = self.read_s + self.score_s
        return self.items / total if total > 0 else 0.0

    def category(self, name: str) -> CategoryChange:
        return self.categories.setdefault(name, CategoryChange(name))

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "policy_hash": self.policy_hash,
            "items": self.items,
            "flagged_before": self.flagged_before,
            "flagged_after": self.flagged_after,
            "newly_flagged": self.newly_flagged,
            "no_longer_flagged": self.no_longer_flagged,
            "recategorised": self.recategorised,
            "uncertain_after": self.uncertain_after,
            "read_s": round(self.read_s, 3),
            "score_s": round(self.score_s, 3),
            "items_per_s": round(self.items_per_s, 1),
            "categories": {name: vars(change) for name, change in sorted(self.categories.items())},
        }

    def table(self) -> str:
        lines = [
            f"policy {self.policy_version} ({self.policy_hash[:12]}) against the verdicts acted on, "
            f"over {self.items:,} {self.over}",
            f"{'category':<18}{'flagged before':>16}{'flagged after':>15}{'newly flagged':>15}{'no longer':>11}",
        ]
        for name, change in sorted(self.categories.items()):
            lines.append(
                f"{name:<18}{change.flagged_before:>16,}{change.flagged_after:>15,}"
                f"{change.newly_flagged:>15,}{change.no_longer_flagged:>11,}"
            )
        lines.append(
            f"{'all':<18}{self.flagged_before:>16,}{self.flagged_after:>15,}"
            f"{self.newly_flagged:>15,}{self.no_longer_flagged:>11,}"
        )
        lines.append(
            f"recategorised (flagged both times, other category or action): {self.recategorised:,}; "
            f"uncertain under the candidate: {self.uncertain_after:,}"
        )
        for name, change in sorted(self.categories.items()):
            if change.examples_newly_flagged:
                lines.append(f"  {name} newly flagged, e.g.: {', '.join(change.examples_newly_flagged)}")
            if change.examples_no_longer_flagged:
                lines.append(f"  {name} no longer flagged, e.g.: {', '.join(change.examples_no_longer_flagged)}")
        if self.over == "stored embeddings":
            lines.append(f"{self.items_per_s:,.0f} items/s (read {self.read_s:.2f} s, score {self.score_s:.2f} s)")
        return "\n".join(lines)


def backtest(
    chunks: Iterable[EmbeddingChunk], text: PolicyText, candidate: LoadedPolicy, examples: int = 5
) -> BacktestReport:
    """Re-decide every stored verdict in `chunks` under `candidate` and count what would change."""
    report = BacktestReport(candidate.version, candidate.sha256)
    names = np.asarray(candidate.policy.category_names, dtype=object)
    started = time.perf_counter()
    for chunk in chunks:
        scored_at = time.perf_counter()
        report.read_s += scored_at - started
        _compare(chunk, _decide(chunk.embeddings, text, candidate), names, report, examples)
        started = time.perf_counter()
        report.score_s += started - scored_at
    return report


def _decide(embeddings: np.ndarray, text: PolicyText, candidate: LoadedPolicy) -> tuple[np.ndarray, ...]:
    flagged, uncertain, top, action = [], [], [], []
    with torch.inference_mode():
        for start in range(0, len(embeddings), _SCORE_CHUNK):
            rows = torch.from_numpy(np.ascontiguousarray(embeddings[start : start + _SCORE_CHUNK], dtype=np.float32))
            scores = score_embeddings(rows, text, candidate.policy).scores.cpu().numpy()
            decided = decide_many(scores, candidate.policy)
            flagged.append(decided.flagged)
            uncertain.append(decided.uncertain)
            top.append(decided.top)
            action.append(decided.action)
    return tuple(np.concatenate(parts) for parts in (flagged, uncertain, top, action))


def _compare(
    chunk: EmbeddingChunk,
    decided: tuple[np.ndarray, ...],
    names: np.ndarray,
    report: BacktestReport,
    examples: int,
) -> None:
    new_flagged, new_uncertain, new_top_index, new_action = decided
    compare(
        report,
        content_ids=chunk.content_ids,
        before=(chunk.flagged, np.asarray(chunk.top_categories, dtype=object), np.asarray(chunk.actions, dtype=object)),
        after=(new_flagged, names[new_top_index], new_action),
        uncertain_after=new_uncertain,
        categories=names,
        examples=examples,
    )


def compare(
    report: BacktestReport,
    *,
    content_ids: list[str],
    before: tuple[np.ndarray, np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray, np.ndarray],
    uncertain_after: np.ndarray,
    categories: Iterable[str],
    examples: int = 5,
) -> None:
    """Add one chunk of (flagged, top category, action) before and after to `report`, per category."""
    old_flagged, old_top, old_action = before
    new_flagged, new_top, new_action = after
    newly = new_flagged & ~old_flagged
    no_longer = old_flagged & ~new_flagged
    both = old_flagged & new_flagged
    report.items += len(content_ids)
    report.flagged_before += int(old_flagged.sum())
    report.flagged_after += int(new_flagged.sum())
    report.newly_flagged += int(newly.sum())
    report.no_longer_flagged += int(no_longer.sum())
    report.recategorised += int((both & ((old_top != new_top) | (old_action != new_action))).sum())
    report.uncertain_after += int(uncertain_after.sum())
    for name in set(categories) | set(old_top[old_flagged]) | set(new_top[new_flagged]):
        change = report.category(str(name))
        was = old_flagged & (old_top == name)
        now = new_flagged & (new_top == name)
        change.flagged_before += int(was.sum())
        change.flagged_after += int(now.sum())
        gained = now & ~old_flagged
        lost = was & ~new_flagged
        change.newly_flagged += int(gained.sum())
        change.no_longer_flagged += int(lost.sum())
        _add_examples(change.examples_newly_flagged, gained, content_ids, examples)
        _add_examples(change.examples_no_longer_flagged, lost, content_ids, examples)


def _add_examples(into: list[str], mask: np.ndarray, content_ids: list[str], limit: int) -> None:
    room = limit - len(into)
    if room > 0:
        into.extend(content_ids[i] for i in np.flatnonzero(mask)[:room])


def shadow_report(
    chunks: Iterable[ShadowChunk], policy_version: str, policy_hash: str, examples: int = 5
) -> BacktestReport:
    """What a shadow policy decided on live traffic, compared with the verdicts acted on, per category."""
    report = BacktestReport(policy_version, policy_hash, over="events seen in shadow")
    for chunk in chunks:
        compare(
            report, content_ids=chunk.content_ids, before=chunk.before, after=chunk.after,
            uncertain_after=chunk.uncertain_after, categories=(), examples=examples,
        )
    return report
