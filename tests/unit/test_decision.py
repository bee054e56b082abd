"""moderation/decision.py: probabilities + policy -> flagged, top category and action."""

from __future__ import annotations

import pytest

from moderation.decision import SEVERITY, Decision, decide
from moderation.policy import Action, Policy, parse_policy

POLICY_TEXT = """\
version: v1
categories:
  safe: {prompts: [a cat]}
  other_safe: {prompts: [a dog]}
  nsfw: {prompts: [nudity], threshold: 0.6, action: block}
  violent: {prompts: [a fight], threshold: 0.3, action: review}
  gore: {prompts: [blood], threshold: 0.3, action: review}
  extreme: {prompts: [something awful], threshold: 0.9, action: escalate}
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(POLICY_TEXT).policy


def probs(**values: float) -> dict[str, float]:
    base = dict.fromkeys(["safe", "other_safe", "nsfw", "violent", "gore", "extreme"], 0.0)
    base.update(values)
    return base


def test_severity_order() -> None:
    assert SEVERITY[Action.REVIEW] < SEVERITY[Action.BLOCK] < SEVERITY[Action.ESCALATE]
    assert Action.ALLOW not in SEVERITY


def test_not_flagged_allows_with_the_most_probable_category(policy: Policy) -> None:
    decision = decide(probs(safe=0.2, other_safe=0.55, nsfw=0.1, violent=0.15), policy)
    assert decision == Decision(flagged=False, top_category="other_safe", action="allow", triggered=())


def test_not_flagged_top_category_can_be_an_unsafe_one_below_threshold(policy: Policy) -> None:
    # nsfw is the argmax but under its 0.6 threshold: allowed, and the verdict says nsfw was most likely.
    decision = decide(probs(safe=0.3, nsfw=0.59, violent=0.11), policy)
    assert decision.flagged is False
    assert decision.action == "allow"
    assert decision.top_category == "nsfw"
    assert decision.triggered == ()


def test_not_flagged_argmax_tie_goes_to_the_first_category_in_policy_order(policy: Policy) -> None:
    decision = decide(probs(safe=0.25, other_safe=0.25, violent=0.25, gore=0.25 - 1e-9), policy)
    # violent and gore are both at 0.25 < 0.3 threshold; not flagged
    assert decision.flagged is False
    assert decision.top_category == "safe"


def test_flagged_at_exactly_the_threshold(policy: Policy) -> None:
    decision = decide(probs(safe=0.4, nsfw=0.6), policy)
    assert decision.flagged is True
    assert decision.action == "block"
    assert decision.top_category == "nsfw"
    assert decision.triggered == ("nsfw",)


def test_just_below_the_threshold_is_not_flagged(policy: Policy) -> None:
    decision = decide(probs(safe=0.4 + 1e-9, nsfw=0.6 - 1e-9), policy)
    assert decision.flagged is False
    assert decision.action == "allow"


def test_flagged_even_when_a_safe_category_is_more_probable(policy: Policy) -> None:
    decision = decide(probs(safe=0.65, violent=0.35), policy)
    assert decision.flagged is True
    assert decision.top_category == "violent"
    assert decision.action == "review"


def test_most_severe_action_wins_over_higher_probability(policy: Policy) -> None:
    # violent (review) has more probability than nsfw (block), but block is more severe.
    decision = decide(probs(nsfw=0.6, violent=0.7), policy)
    assert decision.flagged is True
    assert decision.top_category == "nsfw"
    assert decision.action == "block"
    assert set(decision.triggered) == {"nsfw", "violent"}


def test_escalate_beats_block_and_review(policy: Policy) -> None:
    decision = decide(probs(nsfw=0.95, violent=0.95, extreme=0.9), policy)
    assert decision.top_category == "extreme"
    assert decision.action == "escalate"
    assert set(decision.triggered) == {"nsfw", "violent", "extreme"}


@pytest.mark.parametrize(
    ("violent", "gore", "winner"),
    [(0.5, 0.4, "violent"), (0.35, 0.45, "gore")],
)
def test_same_action_ties_are_broken_by_probability(policy: Policy, violent: float, gore: float, winner: str) -> None:
    decision = decide(probs(violent=violent, gore=gore), policy)
    assert decision.top_category == winner
    assert decision.action == "review"
    assert decision.triggered == ("violent", "gore")  # policy order


def test_triggered_lists_every_category_over_threshold_in_policy_order(policy: Policy) -> None:
    decision = decide(probs(gore=0.3, nsfw=0.6, violent=0.3, extreme=0.1), policy)
    assert decision.triggered == ("nsfw", "violent", "gore")


def test_category_and_action_always_belong_together(policy: Policy) -> None:
    for values in (probs(nsfw=0.7, violent=0.9), probs(gore=0.31, violent=0.3), probs(extreme=1.0, gore=0.99)):
        decision = decide(values, policy)
        assert policy.categories[decision.top_category].action.value == decision.action


def test_missing_category_probability_raises(policy: Policy) -> None:
    values = probs(safe=1.0)
    del values["gore"]
    del values["other_safe"]
    with pytest.raises(ValueError, match=r"no score for categories \['gore', 'other_safe'\]"):
        decide(values, policy)


def test_empty_probabilities_raise(policy: Policy) -> None:
    with pytest.raises(ValueError, match="no score for categories"):
        decide({}, policy)


def test_extra_probabilities_are_ignored(policy: Policy) -> None:
    decision = decide({**probs(safe=0.5), "unknown": 0.99}, policy)
    assert decision.top_category == "safe"
    assert decision.flagged is False


def test_action_is_a_plain_string(policy: Policy) -> None:
    assert type(decide(probs(nsfw=0.9), policy).action) is str
    assert type(decide(probs(safe=0.9), policy).action) is str
