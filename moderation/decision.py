"""The decision: turn category probabilities into flagged / top category / action under a policy.

An image is flagged when any unsafe category reaches its threshold. When several do, the most severe
action wins (escalate > block > review) and the top category is the one that carries it, the higher
probability breaking ties, so the verdict's category and action always belong together. An image that
is not flagged gets the action ``allow`` and its most probable category.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from moderation.policy import Action, Policy

SEVERITY = {Action.REVIEW: 1, Action.BLOCK: 2, Action.ESCALATE: 3}


@dataclass(frozen=True)
class Decision:
    flagged: bool
    top_category: str
    action: str
    triggered: tuple[str, ...]  # every unsafe category that reached its threshold


def decide(probabilities: Mapping[str, float], policy: Policy) -> Decision:
    missing = set(policy.categories) - set(probabilities)
    if missing:
        raise ValueError(f"no probability for categories {sorted(missing)}")
    triggered = [
        name
        for name, category in policy.unsafe_categories.items()
        if category.threshold is not None and probabilities[name] >= category.threshold
    ]
    if not triggered:
        top = max(policy.categories, key=lambda name: probabilities[name])
        return Decision(flagged=False, top_category=top, action=Action.ALLOW.value, triggered=())
    top = max(
        triggered,
        key=lambda name: (SEVERITY[policy.categories[name].action], probabilities[name]),  # type: ignore[index]
    )
    action = policy.categories[top].action
    assert action is not None  # unsafe categories always carry one (validated in the policy model)
    return Decision(flagged=True, top_category=top, action=action.value, triggered=tuple(triggered))
