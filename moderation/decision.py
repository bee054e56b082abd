"""The decision: turn category scores into flagged / top category / action under a policy.

An unsafe category *triggers* when its score reaches its threshold. With an `uncertain_margin`, only a
score at or above ``threshold + margin`` triggers with confidence; a score inside the band
``[threshold - margin, threshold + margin)`` makes the category *uncertain*.

- Any confident trigger: flagged. The most severe action wins (escalate > block > review) and the top
  category is the one that carries it, the higher score breaking ties, so the verdict's category and
  action always belong together.
- Otherwise, any uncertain category: flagged for review and marked uncertain (nothing is blocked on a
  score the policy says it cannot call); the top category is the uncertain one with the highest score.
- Otherwise: not flagged, action ``allow``, top category the highest-scoring one.

`decide_many` applies the rule to a whole matrix of scores at once (a backtest over a million stored
embeddings is a few array operations); `decide` is the same rule for one image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from moderation.policy import Action, Policy

SEVERITY = {Action.REVIEW: 1, Action.BLOCK: 2, Action.ESCALATE: 3}
# Scores are probabilities (softmax) or cosines (independent): both within [-1, 1], so a severity step of
# 4 always outranks any score difference.
_SEVERITY_STEP = 4.0


@dataclass(frozen=True)
class Decision:
    flagged: bool
    top_category: str
    action: str
    triggered: tuple[str, ...]  # every unsafe category whose score reached its threshold
    uncertain: bool = False  # flagged for review because a score fell inside an uncertain band


@dataclass(frozen=True)
class Decisions:
    """`decide_many`'s result: one entry per row of the score matrix."""

    flagged: np.ndarray  # bool [N]
    uncertain: np.ndarray  # bool [N]
    top: np.ndarray  # int [N], an index into `categories`
    action: np.ndarray  # object [N], the action's value ("allow", "review", ...)
    categories: tuple[str, ...]

    def top_names(self) -> np.ndarray:
        return np.asarray(self.categories, dtype=object)[self.top]


def decide_many(scores: np.ndarray, policy: Policy) -> Decisions:
    """The decision for every row of `scores` ([N, n_categories], columns in policy order)."""
    names = tuple(policy.categories)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(names):
        raise ValueError(f"scores must be [N, {len(names)}] for categories {list(names)}, got {scores.shape}")
    n = scores.shape[0]
    confident = np.zeros_like(scores, dtype=bool)
    in_band = np.zeros_like(scores, dtype=bool)
    severity = np.zeros(len(names), dtype=np.float64)
    for j, category in enumerate(policy.categories.values()):
        if category.threshold is None or category.action is None:
            continue
        margin = category.uncertain_margin or 0.0
        column = scores[:, j]
        confident[:, j] = column >= category.threshold + margin
        if margin:
            in_band[:, j] = (column >= category.threshold - margin) & ~confident[:, j]
        severity[j] = SEVERITY[category.action]

    flagged = confident.any(axis=1)
    uncertain = ~flagged & in_band.any(axis=1)
    # One argmax per case over masked keys; rows outside a case are overwritten by the next.
    top = np.where(in_band, scores, -np.inf).argmax(axis=1)
    top = np.where(flagged, np.where(confident, severity * _SEVERITY_STEP + scores, -np.inf).argmax(axis=1), top)
    top = np.where(flagged | uncertain, top, scores.argmax(axis=1))

    actions = np.array(
        [c.action.value if c.action is not None else Action.ALLOW.value for c in policy.categories.values()],
        dtype=object,
    )
    action = np.full(n, Action.ALLOW.value, dtype=object)
    action[flagged] = actions[top[flagged]]
    action[uncertain] = Action.REVIEW.value
    return Decisions(flagged=flagged | uncertain, uncertain=uncertain, top=top, action=action, categories=names)


def decide(scores: Mapping[str, float], policy: Policy) -> Decision:
    """The decision for one image's category scores (probabilities or cosines, per the policy's mode)."""
    missing = set(policy.categories) - set(scores)
    if missing:
        raise ValueError(f"no score for categories {sorted(missing)}")
    row = np.array([[scores[name] for name in policy.categories]], dtype=np.float64)
    decided = decide_many(row, policy)
    triggered = tuple(
        name
        for name, category in policy.unsafe_categories.items()
        if category.threshold is not None and scores[name] >= category.threshold
    )
    return Decision(
        flagged=bool(decided.flagged[0]),
        top_category=policy.category_names[int(decided.top[0])],
        action=str(decided.action[0]),
        triggered=triggered,
        uncertain=bool(decided.uncertain[0]),
    )
