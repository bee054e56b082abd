"""Trained category heads: a logistic model on the stored image embedding, learned from reviewers' labels,
started from and held near the category's zero-shot text direction.

A head scores one category on its own: p = sigmoid(embedding . w + b), a calibrated probability, so a
threshold reads as one. Training first fits the zero-shot score (the cosine to the category's prompt
direction) to the labels with two parameters (Platt scaling): that is the head with no learned direction,
exactly as good at ranking as the prompts. Then it learns a correction to the direction, penalised by its
squared size with a weight that shrinks as labels grow: with ten labels the head barely leaves the prompts
(so a handful of labels cannot make it worse than the prompts it started from), with thousands the labels
decide. No image is read again: heads train on embeddings already in the database.

Heads are stored as safetensors (`weight` [dim] float32, `bias` [1] float32, `prior` [dim] float32, and
metadata: category, model id), pinned by their file's sha256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moderation.exceptions import ModerationError

if TYPE_CHECKING:  # torch only to train: loading and scoring a head are numpy
    import torch

MIN_PER_CLASS = 5
FORMAT = "moderation-head-1"


class HeadError(ModerationError):
    """A head cannot be trained or loaded: too few labels of a class, a mismatched width, a bad file."""


@dataclass(frozen=True)
class Head:
    category: str
    model_id: str
    weight: np.ndarray  # [dim] float32
    bias: float
    prior: np.ndarray = field(repr=False)  # [dim] float32: the zero-shot direction it started from
    pull: float = float("inf")  # how hard it was held to `prior` (inf: the prompts' direction, rescaled)
    # `policy train`'s report, kept in the file (so the pin covers it) for the console's policy page.
    report: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    # Set when read from a file: its sha256 and bytes, as the database keeps them with the policy.
    sha256: str = field(default="", compare=False)
    data: bytes = field(default=b"", repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return np.asarray(embeddings, dtype=np.float32) @ self.weight + self.bias

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Calibrated P(category) for normalised embeddings [N, dim]."""
        if embeddings.shape[-1] != self.dim:
            raise HeadError(f"head {self.category!r} is {self.dim} wide, the embeddings {embeddings.shape[-1]}")
        return _sigmoid(self.logits(embeddings))

    def save(self, path: Path, report: dict[str, Any] | None = None) -> str:
        """Write the head as safetensors (with `report`, or its own, in the metadata); returns the file's
        sha256 (what a policy pins)."""
        from safetensors.numpy import save_file

        metadata = {"category": self.category, "model_id": self.model_id, "format": FORMAT, "pull": repr(self.pull)}
        if (report or self.report) is not None:
            metadata["report"] = json.dumps(report or self.report, sort_keys=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weight": self.weight.astype(np.float32), "bias": np.array([self.bias], dtype=np.float32),
             "prior": self.prior.astype(np.float32)},
            str(path), metadata=metadata,
        )
        return file_sha256(path)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_head(path: Path, expected_sha256: str | None = None) -> Head:
    """A head file, checked against the sha256 a policy pins; HeadError on any mismatch or a bad file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HeadError(f"cannot read head file {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise HeadError(f"head file {path} has sha256 {digest}, the policy pins {expected_sha256}")
    return head_from_bytes(data, str(path), digest)


def head_from_bytes(data: bytes, name: str, digest: str | None = None) -> Head:
    """A head from a file's bytes (`name` for messages): HeadError when they are not a moderation head."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(data)
        metadata = _metadata(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise HeadError(f"head file {name} is not a safetensors head: {exc}") from None
    if metadata.get("format") != FORMAT or not {"weight", "bias", "prior"} <= set(tensors):
        raise HeadError(f"head file {name} is not a moderation head (format {metadata.get('format')!r})")
    weight, prior = tensors["weight"].astype(np.float32), tensors["prior"].astype(np.float32)
    if weight.ndim != 1 or weight.shape != prior.shape or tensors["bias"].shape != (1,):
        raise HeadError(f"head file {name} has tensors of the wrong shapes")
    try:
        pull = float(metadata.get("pull", "inf"))
        report = json.loads(metadata["report"]) if "report" in metadata else None
    except ValueError:
        raise HeadError(f"head file {name} has a bad 'pull' or 'report' entry") from None
    return Head(metadata.get("category", ""), metadata.get("model_id", ""), weight, float(tensors["bias"][0]), prior,
                pull=pull, report=report, sha256=digest or hashlib.sha256(data).hexdigest(), data=data)


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file: its header is an 8-byte little-endian length, then JSON."""
    if len(data) < 8:
        raise ValueError("too short for a safetensors header")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise ValueError("header longer than the file")
    header = json.loads(data[8 : 8 + length])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("__metadata__ is not an object")
    return {str(k): str(v) for k, v in metadata.items()}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)


def _checked(embeddings: np.ndarray, labels: Sequence[bool] | np.ndarray, prior: np.ndarray, category: str,
             min_per_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels, dtype=bool)
    direction = np.asarray(prior, dtype=np.float32)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise HeadError(f"{category}: {x.shape[0] if x.ndim else 0} embeddings but {y.shape[0]} labels")
    if direction.shape != (x.shape[1],):
        raise HeadError(f"{category}: the prompt direction is {direction.shape[0]} wide, the embeddings "
                        f"{x.shape[1]}: labels from another model's embeddings?")
    positives = int(y.sum())
    negatives = int(y.shape[0]) - positives
    if min(positives, negatives) < min_per_class:
        raise HeadError(f"{category}: {positives} labels in the category and {negatives} not; at least "
                        f"{min_per_class} of each are needed")
    return x, y, direction / max(float(np.linalg.norm(direction)), 1e-12)


def train_head(
    embeddings: np.ndarray,
    labels: Sequence[bool] | np.ndarray,
    prior: np.ndarray,
    *,
    category: str = "",
    model_id: str = "",
    pull: float | None = None,
    min_per_class: int = MIN_PER_CLASS,
    seed: int = 0,
) -> Head:
    """A head for one category from normalised embeddings [N, dim] and labels [N] (True: the category
    applies), started from the zero-shot direction `prior` (the category's prompt direction).

    `pull` is how hard the head is held to the prompts' direction (the penalty is pull / N); None chooses
    it by cross-validated log loss among `PULLS`, infinity (the prompts' direction, only rescaled)
    included, so labels move the head only as far as held-out labels say it helps."""
    x, y, direction = _checked(embeddings, labels, prior, category, min_per_class)
    chosen = choose_pull(x, y, direction, seed=seed) if pull is None else pull
    weight, bias = _fit(x, y, direction, chosen)
    return Head(category, model_id, weight, bias, direction.astype(np.float32), pull=chosen)


# Candidate pulls, strongest first; inf keeps the prompts' direction (Platt scaling of the zero-shot score).
PULLS: tuple[float, ...] = (float("inf"), 16.0, 4.0, 1.0, 0.25, 0.05)
_SELECTION_ROWS = 4000  # labels the pull is chosen on (a stratified sample): the choice is cheap at any N


def choose_pull(x: np.ndarray, y: np.ndarray, direction: np.ndarray, *, seed: int = 0) -> float:
    """The candidate pull with the lowest held-out log loss (leave-one-out up to 20 labels, else 5 folds),
    on at most `_SELECTION_ROWS` labels; ties go to the stronger pull."""
    rng = np.random.default_rng(seed)
    if len(y) > _SELECTION_ROWS:
        # Each class keeps its share of the sample, and a rare class at least 100 labels (or all it has):
        # a pull chosen on a handful of positives would say nothing.
        keep = np.concatenate([
            rng.permutation(members)[: max(int(round(_SELECTION_ROWS * share)), min(len(members), 100))]
            for members, share in ((np.flatnonzero(y), y.mean()), (np.flatnonzero(~y), 1 - y.mean()))
        ])
        x, y = x[keep], y[keep]
    k = len(y) if len(y) <= 20 else 5
    splits = folds(y, k, seed)
    losses = []
    for candidate in PULLS:
        total = 0.0
        for held in splits:
            train = np.setdiff1d(np.arange(len(y)), held)
            if y[train].all() or not y[train].any():
                continue
            weight, bias = _fit(x[train], y[train], direction, candidate)
            p = np.clip(_sigmoid(x[held] @ weight + bias).astype(np.float64), 1e-6, 1 - 1e-6)
            total += float(-(y[held] * np.log(p) + (~y[held]) * np.log(1 - p)).sum())
        losses.append(total)
    best = min(losses)
    return next(c for c, loss in zip(PULLS, losses, strict=True) if loss <= best * (1 + 1e-9))


def _fit(x: np.ndarray, y: np.ndarray, direction: np.ndarray, pull: float) -> tuple[np.ndarray, float]:
    """(weight, bias): Platt scaling of the cosine to `direction`, then (finite pull) a correction `delta`
    to the direction under the penalty (pull / N) * |delta|^2. Both fits are convex, by L-BFGS on the log
    loss against Platt's smoothed targets ((P + 1) / (P + 2) and 1 / (M + 2)), which keep the scale
    finite when a few labels are perfectly separated."""
    n, positives = len(y), int(y.sum())
    negatives = n - positives
    with _threads_for(x.size):
        return _fit_on(x, y, direction, pull, n, positives, negatives)


_SMALL_FIT = 2_000_000  # values in x below which one thread is faster than several


@contextmanager
def _threads_for(size: int) -> Iterator[None]:
    """One torch thread for a small fit: the per-operation cost of waking threads dominates a product of a
    few thousand values (measured: a 25-label fit took 2.2 s on 2 busy cores against 7 ms on one). Torch's
    thread count is process-wide, so this is for the training commands, not for a process scoring traffic."""
    import torch

    before = torch.get_num_threads()
    if size >= _SMALL_FIT or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_on(x: np.ndarray, y: np.ndarray, direction: np.ndarray, pull: float, n: int, positives: int,
            negatives: int) -> tuple[np.ndarray, float]:
    import torch

    targets = torch.from_numpy(np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2)).astype(np.float32))
    xt, d = torch.from_numpy(x), torch.from_numpy(direction.astype(np.float32))

    def log_loss(logits: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)

    with torch.enable_grad():
        cosine = xt @ d
        start = 1.0 / max(float(cosine.std()), 1e-3)  # a unit-variance logit to begin with
        scale = torch.tensor(start, requires_grad=True)
        bias = torch.tensor(-float(cosine.mean()) * start, requires_grad=True)
        _minimise([scale, bias], lambda: log_loss(scale * cosine + bias))
        base = scale.detach() * d
        if pull == float("inf"):
            return base.numpy().astype(np.float32), float(bias.detach())
        delta = torch.zeros_like(d, requires_grad=True)
        bias2 = bias.detach().clone().requires_grad_(True)
        strength = pull / n
        _minimise([delta, bias2], lambda: log_loss(xt @ (base + delta) + bias2) + strength * delta.square().sum())
    return (base + delta.detach()).numpy().astype(np.float32), float(bias2.detach())


def _minimise(parameters: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor]) -> None:
    import torch

    optimiser = torch.optim.LBFGS(parameters, lr=1.0, max_iter=100, tolerance_grad=1e-6, tolerance_change=1e-9,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = loss_fn()
        value.backward()
        return value

    optimiser.step(closure)


# -- evaluation ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    precision: float
    recall: float
    f1: float
    roc_auc: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4),
                "roc_auc": None if self.roc_auc is None else round(self.roc_auc, 4), "n": self.n}


def metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Metrics:
    """Precision, recall and F1 of `scores >= threshold`, and ROC AUC of the scores, against `labels`."""
    labels = np.asarray(labels, dtype=bool)
    predicted = np.asarray(scores) >= threshold
    tp = int(np.sum(predicted & labels))
    precision = tp / max(1, int(predicted.sum()))
    recall = tp / max(1, int(labels.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(precision, recall, f1, roc_auc(scores, labels), int(labels.shape[0]))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """The probability that a random positive outscores a random negative (ties count half)."""
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start:start + count]] = start + (count + 1) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def folds(labels: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Stratified fold indices: each fold gets its share of each class."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=bool)
    assigned = np.empty(len(labels), dtype=np.int64)
    for value in (True, False):
        members = np.flatnonzero(labels == value)
        rng.shuffle(members)
        assigned[members] = np.arange(len(members)) % k
    return [np.flatnonzero(assigned == i) for i in range(k)]


def threshold_for(scores: np.ndarray, labels: np.ndarray, *, precision: float | None = None,
                  recall: float | None = None) -> float | None:
    """The lowest threshold whose flags reach `precision`, or the highest that keeps `recall`; None when no
    threshold does. One sort: every candidate's precision and recall from cumulative counts."""
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    ordered, hits = np.asarray(scores, dtype=np.float64)[order], labels[order]
    last = np.r_[ordered[1:] != ordered[:-1], True]  # the last row of each run of equal scores
    tp = np.cumsum(hits)[last]
    flagged = (np.flatnonzero(last) + 1).astype(np.float64)
    thresholds = ordered[last]
    positives = max(1, int(labels.sum()))
    if precision is not None:
        meets = np.flatnonzero((tp / flagged >= precision) & (tp > 0))
        return float(thresholds[meets[-1]]) if len(meets) else None
    if recall is not None:
        meets = np.flatnonzero(tp / positives >= recall)
        return float(thresholds[meets[0]]) if len(meets) else None
    raise ValueError("give precision or recall")
