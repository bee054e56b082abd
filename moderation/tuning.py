"""Threshold tuning: per-category thresholds for a target precision or recall, from labelled examples.

An unsafe category triggers when its own score reaches its threshold, whatever the other categories
score, so each category's threshold can be chosen alone from the precision/recall curve of its score
over a labelled set: items whose labels include the category are its positives, every other item a
negative. Labels come from a file (content ids of stored verdicts, or image paths) or from reviewers'
decisions on flagged items (see moderation/storage/review_decisions.py); the latter only cover what was flagged,
so they measure precision well and recall not at all below the current threshold.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moderation.category_scores import PolicyText, score_embeddings
from moderation.exceptions import ModerationError
from moderation.policy import LoadedPolicy

NEGATIVE_LABELS = {"", "none", "safe", "clean", "allow"}
_MIN_THRESHOLD = 1e-6  # a policy threshold must be above zero
_MAX_DECIMALS = 12  # beyond this a float64 score difference is noise; print `1 - 3e-13` instead


class LabelsError(ModerationError):
    """A labels file cannot be used as it is; the message names the file and the problem."""


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
    item is a negative for every category. Category labels are lower-cased: policy category names are
    lower_snake_case by the schema, so `RED` can only mean `red`. Image paths are relative to the labels
    file. Raises `LabelsError` (file and problem) for a missing file, bad JSON or missing columns.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            records = _jsonl_records(path)
        else:
            records = _csv_records(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"labels file {path}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from exc
    if not records:
        raise LabelsError(f"labels file {path}: holds no labelled items")
    items = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise LabelsError(f"labels file {path}: record {number} is not an object")
        if "categories" not in record and "category" not in record:
            raise LabelsError(f"labels file {path}: record {number} has neither 'category' nor 'categories'")
        raw = record.get("categories", record.get("category", ""))
        names = raw if isinstance(raw, list) else str(raw or "").split(";")
        labels = (str(n).strip().lower() for n in names)
        categories = frozenset(label for label in labels if label not in NEGATIVE_LABELS)
        if record.get("content_id"):
            items.append(LabelledItem(categories, content_id=str(record["content_id"])))
        elif record.get("image"):
            items.append(LabelledItem(categories, image=path.parent / str(record["image"])))
        else:
            raise LabelsError(f"labels file {path}: record {number} has neither 'content_id' nor 'image'")
    return items


def _jsonl_records(path: Path) -> list[Any]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise LabelsError(f"labels file {path}, line {number}: not JSON: {exc.msg}") from exc
    return records


def _csv_records(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        # Checked on the header, so a file with the wrong columns says so once, not per row.
        if "content_id" not in columns and "image" not in columns:
            raise LabelsError(
                f"labels file {path}: no 'content_id' or 'image' column (header: {', '.join(columns) or 'none'})"
            )
        if "category" not in columns and "categories" not in columns:
            raise LabelsError(
                f"labels file {path}: no 'category' or 'categories' column (header: {', '.join(columns)})"
            )
        reader.fieldnames = columns
        return list(reader)


def unknown_labels(labels: Iterable[frozenset[str]], policy: LoadedPolicy) -> Counter[str]:
    """Labels that name no category of `policy`, with how many items carry each.

    Such a label would otherwise make its items negatives for every category: a typo or another
    taxonomy's name ("porn" for "nsfw") would quietly turn true positives into false negatives.
    """
    known = set(policy.policy.categories)
    return Counter(label for item in labels for label in item if label not in known)


def describe_unknown(unknown: Counter[str], policy: LoadedPolicy) -> str:
    """One line: each unknown label with its count (and a close category name), then the policy's categories."""
    names = list(policy.policy.categories)
    parts = []
    for label, count in unknown.most_common():
        close = difflib.get_close_matches(label, names, n=1)
        parts.append(f"{label!r} ({count})" + (f", did you mean {close[0]!r}?" if close else ""))
    return (
        f"labels that are not categories of policy {policy.version}: {'; '.join(parts)} "
        f"(the policy's categories: {', '.join(names)}; use 'safe', 'none' or empty for negatives)"
    )


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

    With `target_precision`: among thresholds whose precision reaches it, the one with the most recall,
    and at equal recall the best precision. With `target_recall`: among thresholds whose recall reaches
    it, the best precision, and at equal precision the most recall. The suggested threshold is then
    placed inside the gap below the chosen score (see `_inside_gap`), never on an item's score.
    """
    if (target_precision is None) == (target_recall is None):
        raise ValueError("give exactly one of target_precision and target_recall")
    target = target_precision if target_precision is not None else target_recall
    if not 0 < target <= 1:  # type: ignore[operator]
        raise ValueError(f"a precision or recall target must be in (0, 1], got {target}")
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
        results.append(CategoryTuning(
            category=name,
            positives=int(positive.sum()),
            negatives=int((~positive).sum()),
            current_threshold=category.threshold,
            current=point_at(column, positive, category.threshold) if len(column) else None,
            suggested=choose_threshold(
                column, positive, target_precision=target_precision, target_recall=target_recall
            ),
            curve=_spread(full, points),
        ))
    return results


def choose_threshold(
    scores: np.ndarray,
    positive: np.ndarray,
    *,
    target_precision: float | None = None,
    target_recall: float | None = None,
) -> CurvePoint | None:
    """The suggested operating point of one category's scores for the target (see `suggest`), its
    threshold placed inside the gap below the chosen score; None when no threshold reaches the target."""
    if not len(scores):
        return None
    full = curve(scores, positive)
    chosen = suggest(full, target_precision=target_precision, target_recall=target_recall)
    return None if chosen is None else point_at(scores, positive, _inside_gap(full, chosen))


def suggest(
    full: Sequence[CurvePoint], *, target_precision: float | None = None, target_recall: float | None = None
) -> CurvePoint | None:
    """The curve point to operate at for the target (see `tune`); None when no point reaches it.

    Both rules end on a point whose lowest flagged score is a positive's: moving down to take in one
    more positive improves precision and recall, and at equal recall the higher threshold flags fewer
    negatives. The lowest threshold that merely reaches a precision target can instead sit exactly on a
    false positive's score, buying nothing for it.
    """
    if target_precision is not None:
        reaching = [p for p in full if p.precision >= target_precision]
        return max(reaching, key=lambda p: (p.recall, p.precision, p.threshold), default=None)
    if target_recall is None:
        raise ValueError("give target_precision or target_recall")
    reaching = [p for p in full if p.recall >= target_recall]
    return max(reaching, key=lambda p: (p.precision, p.recall, p.threshold), default=None)


def _inside_gap(full: Sequence[CurvePoint], chosen: CurvePoint) -> float:
    """A threshold that flags exactly what `chosen` flags, away from every item's score.

    Any threshold in (next lower score, chosen score] flags the same items; the midpoint keeps a margin
    on both sides (a score recomputed on another device, or rounded, does not cross it), rounded to the
    fewest decimals that stay inside the gap, so it can be copied into the policy as printed. With no
    lower score the chosen score itself is kept. Policy thresholds must be above zero.
    """
    lower = [p.threshold for p in full if p.threshold < chosen.threshold]
    if not lower:
        return max(chosen.threshold, _MIN_THRESHOLD)
    low, high = max(lower), chosen.threshold
    middle = (low + high) / 2
    threshold = middle
    for decimals in range(2, _MAX_DECIMALS + 1):
        rounded = round(middle, decimals)
        if low < rounded <= high:
            threshold = rounded
            break
    return min(max(threshold, _MIN_THRESHOLD), 1.0)


def format_score(value: float, decimals: int = 4) -> str:
    """`value` with `decimals` decimals, or more where that would print a score that is not 1 as 1.0000
    (or one that is not 0 as 0.0000): with a softmax over few categories, confident scores crowd
    against 1, and a curve of identical-looking thresholds says nothing."""
    text = f"{value:.{decimals}f}"
    extreme = {f"{0:.{decimals}f}", f"{-0.0:.{decimals}f}", f"{1:.{decimals}f}"}
    if value in (0.0, 1.0) or text not in extreme or not math.isfinite(value):
        return text
    for more in range(decimals + 1, _MAX_DECIMALS + 1):
        text = f"{value:.{more}f}"
        if text not in {f"{0:.{more}f}", f"{-0.0:.{more}f}", f"{1:.{more}f}"}:
            return text
    return f"1 - {1 - value:.1e}" if value > 0.5 else f"{value:.1e}"


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
            f"current threshold {format_score(result.current_threshold)}"
            + (f" -> precision {now.precision:.3f} recall {now.recall:.3f}" if now else "")
        )
        if result.suggested is None:
            lines.append("  no threshold reaches the target on this set")
        else:
            best = result.suggested
            lines.append(
                f"  suggested threshold {format_score(best.threshold)} -> "
                f"precision {best.precision:.3f} recall {best.recall:.3f}"
            )
        lines.append(f"  {'threshold':>10} {'precision':>10} {'recall':>8} {'flagged':>8}")
        for point in result.curve:
            threshold = format_score(point.threshold)
            lines.append(f"  {threshold:>10} {point.precision:>10.3f} {point.recall:>8.3f} {point.flagged:>8}")
    return "\n".join(lines)
