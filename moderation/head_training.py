"""Training a policy's category heads from labelled embeddings, and the report a policy editor reads first.

For each category trained, on the same labelled items: cross-validated precision, recall, F1 and ROC AUC
of the head (at the threshold the draft policy will use) against the zero-shot policy (at its own
threshold); a learning curve (the head trained on 25, 50, 100 labels, then all, each scored on held-out
folds); the head's calibration (predicted probability against the observed rate, per bin); suggested
thresholds for target precisions and recalls; and the head itself, trained on every label. Embeddings
come from the database or the model (consumers/commands/train.py); nothing here reads an image.

Held-out figures are out-of-fold: each item is scored by a head that never saw its label; above 20,000
labels they are measured on a stratified sample of 20,000 (the final head learns from all). The pull
(how far labels may move the head from the prompts' direction) is chosen once on all labels, which
makes the cross-validated head figures very slightly optimistic; the benchmark (bench/heads.py) measures
on images no training step saw.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from moderation.category_scores import PolicyText, score_embeddings
from moderation.heads import (
    MIN_PER_CLASS,
    Head,
    HeadError,
    Metrics,
    choose_pull,
    folds,
    metrics,
    threshold_for,
    train_head,
)
from moderation.policy import LoadedPolicy

CURVE_SIZES = (25, 50, 100)  # then all labels
TARGET_PRECISIONS = (0.9, 0.95, 0.99)
TARGET_RECALLS = (0.9, 0.95, 0.99)
_MAX_FOLDS = 5
_CURVE_FOLDS = 3  # folds each learning-curve point is averaged over
_EVALUATED = 20_000  # labels the held-out figures are measured on, at most (a stratified sample)
_BINS = 10


@dataclass(frozen=True)
class CurvePoint:
    labels: int  # labels the heads were trained on (per fold)
    head: Metrics  # out-of-fold, pooled over the folds
    zero_shot: Metrics  # the same held-out items


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    items: int
    predicted: float  # mean predicted probability
    observed: float  # fraction in the category


@dataclass(frozen=True)
class SuggestedThreshold:
    target: str  # "precision >= 0.9", "recall >= 0.95"
    threshold: float | None  # None: no threshold reaches it on these labels
    precision: float | None = None
    recall: float | None = None


@dataclass
class CategoryReport:
    category: str
    positives: int
    negatives: int
    folds: int
    pull: float
    threshold: float  # what the draft policy uses for the head
    zero_shot_threshold: float
    head: Metrics
    zero_shot: Metrics
    zero_shot_best_f1: float  # the zero-shot score at its best threshold for these labels (an upper bound)
    curve: list[CurvePoint] = field(default_factory=list)
    calibration: list[CalibrationBin] = field(default_factory=list)
    expected_calibration_error: float = 0.0
    thresholds: list[SuggestedThreshold] = field(default_factory=list)
    train_s: float = 0.0  # the final head, on every label
    evaluated: int = 0  # labels the held-out figures were measured on (all, or a stratified sample of them)
    evaluate_s: float = 0.0  # cross-validation, curve and calibration

    def as_dict(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, Metrics):
                return value.as_dict()
            if dataclasses.is_dataclass(value):
                return {k: plain(v) for k, v in vars(value).items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            if isinstance(value, float):
                return None if not np.isfinite(value) else round(value, 6)
            return value

        out = {k: plain(v) for k, v in vars(self).items()}
        out["pull"] = "prompts only" if not np.isfinite(self.pull) else self.pull
        return out


@dataclass(frozen=True)
class TrainedCategory:
    head: Head
    report: CategoryReport


def zero_shot_text(text: PolicyText) -> PolicyText:
    """The policy's text side without its trained heads: what its prompts alone score."""
    return dataclasses.replace(text, head_weights=None, head_bias=None, head_columns=())


def train_category(
    policy: LoadedPolicy,
    text: PolicyText,
    embeddings: np.ndarray,
    labels: Sequence[frozenset[str]],
    category: str,
    *,
    model_id: str,
    target_precision: float | None = None,
    target_recall: float | None = None,
    seed: int = 0,
) -> TrainedCategory:
    """Train `category`'s head on every label and report how it does against the zero-shot policy.

    `embeddings` [N, dim] (float16 or float32, normalised) and `labels` (per item, the categories that
    truly apply) align. The draft threshold is the one meeting `target_precision` / `target_recall` on
    out-of-fold scores when one is given (and reachable), else 0.5: the head's scores are probabilities.
    Raises `HeadError` for an unknown or safe category or too few labels of a class."""
    names = policy.policy.category_names
    if category not in names:
        raise HeadError(f"{category!r} is not a category of policy {policy.version} ({', '.join(names)})")
    config = policy.policy.categories[category]
    if config.threshold is None:
        raise HeadError(f"{category!r} is a safe category of policy {policy.version}: only unsafe ones get heads")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    y = np.array([category in item for item in labels], dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if min(positives, negatives) < MIN_PER_CLASS:
        raise HeadError(f"{category}: {positives} labels in the category and {negatives} not; at least "
                        f"{MIN_PER_CLASS} of each are needed")
    column = names.index(category)
    zero_shot_scores = _scores(x, zero_shot_text(text), policy)[:, column]
    prior = text.category_embeddings[column].detach().cpu().float().numpy()

    started = time.perf_counter()
    pull = choose_pull(x, y, prior / np.linalg.norm(prior), seed=seed)
    # Held-out figures from at most _EVALUATED labels: their error is already well under a point of F1,
    # and the final head still learns from every label.
    ev = _stratified_subset(y, _EVALUATED, seed)
    ex, ey, ezero = x[ev], y[ev], zero_shot_scores[ev]
    k = min(_MAX_FOLDS, int(ey.sum()), int((~ey).sum()))
    splits = folds(ey, k, seed)
    out_of_fold = np.empty(len(ey), dtype=np.float32)
    for held in splits:
        train = np.setdiff1d(np.arange(len(ey)), held)
        head = train_head(ex[train], ey[train], prior, pull=pull, min_per_class=1)
        out_of_fold[held] = head.probabilities(ex[held])
    threshold, suggestions = _thresholds(out_of_fold, ey, target_precision, target_recall)
    curve = _curve(ex, ey, prior, splits[:_CURVE_FOLDS], ezero, config.threshold, seed)
    curve.append(CurvePoint(len(ey) - len(ey) // k, metrics(out_of_fold, ey, threshold),
                            metrics(ezero, ey, config.threshold)))
    bins, ece = _calibration(out_of_fold, ey)
    evaluate_s = time.perf_counter() - started

    started = time.perf_counter()
    final = train_head(x, y, prior, category=category, model_id=model_id, pull=pull)
    train_s = time.perf_counter() - started
    report = CategoryReport(
        category=category, positives=positives, negatives=negatives, folds=k, pull=pull, threshold=threshold,
        zero_shot_threshold=config.threshold, head=metrics(out_of_fold, ey, threshold),
        zero_shot=metrics(ezero, ey, config.threshold),
        zero_shot_best_f1=best_f1(ezero, ey), curve=curve, calibration=bins,
        expected_calibration_error=ece, thresholds=suggestions, train_s=train_s, evaluate_s=evaluate_s,
        evaluated=len(ey),
    )
    return TrainedCategory(final, report)


def _scores(x: np.ndarray, text: PolicyText, policy: LoadedPolicy) -> np.ndarray:
    with torch.inference_mode():
        return score_embeddings(torch.from_numpy(x), text, policy.policy).scores.cpu().numpy()


def _thresholds(
    scores: np.ndarray, y: np.ndarray, target_precision: float | None, target_recall: float | None
) -> tuple[float, list[SuggestedThreshold]]:
    suggestions = []
    for kind, targets in (("precision", TARGET_PRECISIONS), ("recall", TARGET_RECALLS)):
        wanted = target_precision if kind == "precision" else target_recall
        for target in sorted({*targets, *([wanted] if wanted is not None else [])}):
            found = threshold_for(scores, y, **{kind: target})
            if found is None:
                suggestions.append(SuggestedThreshold(f"{kind} >= {target:g}", None))
                continue
            at = metrics(scores, y, found)
            suggestions.append(SuggestedThreshold(f"{kind} >= {target:g}", found, at.precision, at.recall))
    threshold = 0.5
    wanted = (
        f"precision >= {target_precision:g}" if target_precision is not None
        else f"recall >= {target_recall:g}" if target_recall is not None else None
    )
    chosen = next((s for s in suggestions if s.target == wanted), None)
    if chosen is not None and chosen.threshold is not None:
        threshold = float(min(max(chosen.threshold, 1e-6), 1.0))
    return threshold, suggestions


def _curve(
    x: np.ndarray, y: np.ndarray, prior: np.ndarray, splits: list[np.ndarray], zero_shot: np.ndarray,
    zero_shot_threshold: float, seed: int,
) -> list[CurvePoint]:
    """Heads trained on `size` labels drawn from each fold's training part (half in the category where
    there are enough), scored on the held-out fold, pooled; sizes the labels cannot fill are skipped."""
    rng = np.random.default_rng(seed + 1)
    points = []
    train_size = len(y) - max(len(s) for s in splits)
    for size in CURVE_SIZES:
        if size >= train_size:
            break
        scores, truth, baseline = [], [], []
        for held in splits:
            train = np.setdiff1d(np.arange(len(y)), held)
            chosen = _stratified_sample(train, y, size, rng)
            if chosen is None:
                continue
            # The pull is chosen again for the smaller set: it is the point of the curve.
            head = train_head(x[chosen], y[chosen], prior, min_per_class=1, seed=seed)
            scores.append(head.probabilities(x[held]))
            truth.append(y[held])
            baseline.append(zero_shot[held])
        if scores:
            held_y = np.concatenate(truth)
            points.append(CurvePoint(size, metrics(np.concatenate(scores), held_y, 0.5),
                                     metrics(np.concatenate(baseline), held_y, zero_shot_threshold)))
    return points


def _stratified_subset(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of at most `size` items keeping the classes' shares (all of them when there are fewer)."""
    if len(y) <= size:
        return np.arange(len(y))
    rng = np.random.default_rng(seed + 2)
    keep = [rng.permutation(np.flatnonzero(y == value))[: max(1, round(size * share))]
            for value, share in ((True, y.mean()), (False, 1 - y.mean()))]
    return np.sort(np.concatenate(keep))


def _stratified_sample(pool: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray | None:
    """`size` of `pool`, half positives where there are enough; None when a class would have fewer than 2."""
    positives, negatives = pool[y[pool]], pool[~y[pool]]
    take_positive = min(len(positives), max(2, size // 2), size - 2)
    take_negative = size - take_positive
    if take_positive < 2 or take_negative > len(negatives):
        return None
    return np.concatenate([rng.choice(positives, take_positive, replace=False),
                           rng.choice(negatives, take_negative, replace=False)])


def _calibration(scores: np.ndarray, y: np.ndarray) -> tuple[list[CalibrationBin], float]:
    edges = np.linspace(0.0, 1.0, _BINS + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, _BINS - 1)
    bins, error = [], 0.0
    for b in range(_BINS):
        members = which == b
        count = int(members.sum())
        if not count:
            continue
        predicted, observed = float(scores[members].mean()), float(y[members].mean())
        bins.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), count, predicted, observed))
        error += count / len(y) * abs(predicted - observed)
    return bins, error


def best_f1(scores: np.ndarray, y: np.ndarray) -> float:
    """The F1 of the best threshold on `scores` for labels `y`, from one sort (an upper bound for any
    threshold chosen without the labels)."""
    order = np.argsort(-scores, kind="mergesort")
    hits = y[order]
    tp = np.cumsum(hits)
    flagged = np.arange(1, len(y) + 1)
    last = np.r_[scores[order][1:] != scores[order][:-1], True]
    f1 = 2 * tp / (flagged + max(1, int(y.sum())))
    return float(f1[last].max()) if len(f1) else 0.0


def table(report: CategoryReport) -> str:
    """The report as a policy editor reads it in a terminal."""
    def row(name: str, m: Metrics, threshold: str) -> str:
        auc = "-" if m.roc_auc is None else f"{m.roc_auc:.3f}"
        return f"  {name:<22}{threshold:>10}{m.precision:>11.3f}{m.recall:>8.3f}{m.f1:>7.3f}{auc:>9}"

    pull = "prompts only" if not np.isfinite(report.pull) else f"{report.pull:g}"
    lines = [
        f"{report.category}: {report.positives} labels in the category, {report.negatives} not; "
        f"{report.folds}-fold cross-validation on {report.evaluated:,} of them; pull {pull}",
        f"  {'':<22}{'threshold':>10}{'precision':>11}{'recall':>8}{'F1':>7}{'ROC AUC':>9}",
        row("zero-shot (prompts)", report.zero_shot, f"{report.zero_shot_threshold:.4g}"),
        row("trained head", report.head, f"{report.threshold:.4g}"),
        f"  zero-shot at its best threshold for these labels: F1 {report.zero_shot_best_f1:.3f}",
        "  learning curve (held-out F1, head vs zero-shot):  "
        + "  ".join(f"{p.labels}: {p.head.f1:.3f} vs {p.zero_shot.f1:.3f}" for p in report.curve),
        f"  calibration: expected calibration error {report.expected_calibration_error:.3f}; "
        + "  ".join(f"[{b.low:.1f},{b.high:.1f}) {b.predicted:.2f}->{b.observed:.2f} ({b.items})"
                    for b in report.calibration),
        "  suggested thresholds: " + "; ".join(
            f"{s.target}: {s.threshold:.4f} (precision {s.precision:.3f}, recall {s.recall:.3f})"
            if s.threshold is not None else f"{s.target}: none reaches it"
            for s in report.thresholds
        ),
        f"  trained in {report.train_s:.2f} s on all labels (cross-validation {report.evaluate_s:.2f} s)",
    ]
    return "\n".join(lines)
