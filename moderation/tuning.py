"""Threshold tuning: per-category thresholds for a target precision or recall, from labelled examples.

An unsafe category triggers when its own score reaches its threshold, whatever the other categories
score, so each category's threshold can be chosen alone from the precision/recall curve of its score
over a labelled set: items whose labels include the category are its positives, every other item a
negative. Labels come from a file (content ids of stored verdicts, or image paths) or from reviewers'
decisions on flagged items (see moderation/storage/outcomes.py); the latter only cover what was flagged,
so they measure precision well and recall not at all below the current threshold.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moderation.policy import LoadedPolicy
from moderation.scoring import PolicyText, score_embeddings

_NEGATIVE_LABELS = {"", "none", "safe", "clean", "allow"}
_MIN_THRESHOLD = 1e-6  # a policy threshold must be above zero


@dataclass(frozen=True)
class LabelledItem:
    """One labelled example: a stored verdict's content id, or an image file; and its true categories."""

    categories: frozenset[str]
    content_id: str | None = None
    image: Path | None = None


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    precision: float
    recall: float
    flagged: int  # items at or above the threshold


@dataclass
class CategoryTuning:
    category: str
    positives: int
    negatives: int
    current_threshold: float
    current: CurvePoint | None
    suggested: CurvePoint | None  # None: no threshold reaches the target
    curve: list[CurvePoint] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "positives": self.positives,
            "negatives": self.negatives,
            "current_threshold": self.current_threshold,
            "current": vars(self.current) if self.current else None,
            "suggested": vars(self.suggested) if self.suggested else None,
            "curve": [vars(point) for point in self.curve],
        }


def load_labels(path: Path) -> list[LabelledItem]:
    """Read a CSV (header with `content_id` or `image`, and `category` or `categories`) or a JSONL file.

    Several categories are separated by `;` in CSV (a list in JSONL); `safe`, `none` or empty mean the
    item is a negative for every category. Image paths are relative to the labels file.
    """
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON: {exc.msg}") from exc
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            records = list(csv.DictReader(handle))
    items = []
    for number, record in enumerate(records, start=1):
        raw = record.get("categories", record.get("category", ""))
        names = raw if isinstance(raw, list) else str(raw or "").split(";")
        categories = frozenset(n.strip() for n in names if n.strip().lower() not in _NEGATIVE_LABELS)
        if record.get("content_id"):
            items.append(LabelledItem(categories, content_id=str(record["content_id"])))
        elif record.get("image"):
            items.append(LabelledItem(categories, image=path.parent / str(record["image"])))
        else:
            raise ValueError(f"{path}: record {number} has neither 'content_id' nor 'image'")
    return items


def curve(scores: np.ndarray, positive: np.ndarray) -> list[CurvePoint]:
    """Precision and recall of `score >= t` for every distinct score t, highest threshold first."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], positive[order].astype(np.int64)
    true_positives, flagged = np.cumsum(hits), np.arange(1, len(ranked) + 1)
    # Where a score repeats, only its last position counts: all items with that score flag together.
    last = np.r_[ranked[1:] != ranked[:-1], True]
    total = max(int(positive.sum()), 1)
    return [
        CurvePoint(
            float(ranked[i]), float(true_positives[i] / flagged[i]), float(true_positives[i] / total), int(flagged[i])
        )
        for i in np.flatnonzero(last)
    ]


def point_at(scores: np.ndarray, positive: np.ndarray, threshold: float) -> CurvePoint:
    flagged = scores >= threshold
    true_positives = int((flagged & positive).sum())
    return CurvePoint(
        threshold,
        true_positives / max(int(flagged.sum()), 1),
        true_positives / max(int(positive.sum()), 1),
        int(flagged.sum()),
    )


def tune(
    policy: LoadedPolicy,
    text: PolicyText,
    embeddings: np.ndarray,
    labels: Sequence[frozenset[str]],
    *,
    target_precision: float | None = None,
    target_recall: float | None = None,
    points: int = 10,
) -> list[CategoryTuning]:
    """For each unsafe category: its curve, its current operating point and the suggested threshold.

    With `target_precision`, the lowest threshold whose precision reaches it (the most recall at that
    precision); with `target_recall`, the highest threshold whose recall reaches it.
    """
    if (target_precision is None) == (target_recall is None):
        raise ValueError("give exactly one of target_precision and target_recall")
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    with torch.inference_mode():
        rows = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
        scores = score_embeddings(rows, text, policy.policy).scores.cpu().numpy()
    results = []
    for j, (name, category) in enumerate(policy.policy.categories.items()):
        if category.threshold is None:
            continue
        positive = np.array([name in item for item in labels], dtype=bool)
        column = scores[:, j].astype(np.float64)
        full = curve(column, positive) if len(column) else []
        if target_precision is not None:
            reaching = [p for p in full if p.precision >= target_precision]
            suggested = min(reaching, key=lambda p: p.threshold) if reaching else None
        else:
            reaching = [p for p in full if p.recall >= target_recall]  # type: ignore[operator]
            suggested = max(reaching, key=lambda p: p.threshold) if reaching else None
        if suggested is not None and suggested.threshold <= 0:
            suggested = CurvePoint(_MIN_THRESHOLD, suggested.precision, suggested.recall, suggested.flagged)
        results.append(CategoryTuning(
            category=name,
            positives=int(positive.sum()),
            negatives=int((~positive).sum()),
            current_threshold=category.threshold,
            current=point_at(column, positive, category.threshold) if len(column) else None,
            suggested=suggested,
            curve=_spread(full, points),
        ))
    return results


def _spread(full: list[CurvePoint], points: int) -> list[CurvePoint]:
    """About `points` curve points evenly spaced in recall, for printing."""
    if len(full) <= points:
        return full
    picked = {0, len(full) - 1}
    for target in np.linspace(0, 1, points):
        picked.add(min(range(len(full)), key=lambda i: abs(full[i].recall - target)))
    return [full[i] for i in sorted(picked)]


def table(results: Sequence[CategoryTuning], target: str) -> str:
    lines = [f"suggested thresholds for {target}"]
    for result in results:
        now = result.current
        lines.append(
            f"\n{result.category}: {result.positives} positives, {result.negatives} negatives; "
            f"current threshold {result.current_threshold:.4f}"
            + (f" -> precision {now.precision:.3f} recall {now.recall:.3f}" if now else "")
        )
        if result.suggested is None:
            lines.append("  no threshold reaches the target on this set")
        else:
            best = result.suggested
            lines.append(
                f"  suggested threshold {best.threshold:.4f} -> precision {best.precision:.3f} recall {best.recall:.3f}"
            )
        lines.append(f"  {'threshold':>10} {'precision':>10} {'recall':>8} {'flagged':>8}")
        for point in result.curve:
            lines.append(f"  {point.threshold:>10.4f} {point.precision:>10.3f} {point.recall:>8.3f} {point.flagged:>8}")
    return "\n".join(lines)
