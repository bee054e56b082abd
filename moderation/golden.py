"""Golden examples: a policy file's own regression tests, so a policy edit can be reviewed like code.

A policy lists images with the verdict each must get (see `Example` in moderation/policy.py); image
paths are relative to the policy file. `run_examples` scores them through the live path and reports
every example whose verdict differs; `moderation policy check` fails when any does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moderation.contracts import Scorer
from moderation.decision import Decision, decide
from moderation.offline import embed_files
from moderation.policy import ALLOW_EXPECTATION, Example, LoadedPolicy


@dataclass(frozen=True)
class ExampleResult:
    example: Example
    passed: bool
    got: str  # "flagged <category> (<action>)", "allowed (<top category>)" or the load error
    uncertain: bool = False


def run_examples(policy: LoadedPolicy, scorer: Scorer) -> list[ExampleResult]:
    """Score every golden example of `policy` with `scorer` and compare with what it expects."""
    examples = policy.policy.examples
    base = Path(policy.path).parent
    paths = [(base / example.image) for example in examples]
    embedded = embed_files(scorer, paths)
    rows = sorted(embedded.embeddings)
    scores = scorer.score_embeddings(np.stack([embedded.embeddings[i] for i in rows]), policy) if rows else []
    by_position = dict(zip(rows, scores, strict=True))
    results = []
    for i, example in enumerate(examples):
        if i in embedded.failures:
            results.append(ExampleResult(example, False, f"not scored: {embedded.failures[i]}"))
            continue
        decision = decide(by_position[i].probabilities, policy.policy)
        if decision.flagged:
            got = f"flagged {decision.top_category} ({decision.action}{', uncertain' if decision.uncertain else ''})"
        else:
            got = f"allowed ({decision.top_category})"
        results.append(ExampleResult(example, _passes(example, policy, decision), got, decision.uncertain))
    return results


def _passes(example: Example, policy: LoadedPolicy, decision: Decision) -> bool:
    if example.uncertain is not None and example.uncertain != decision.uncertain:
        return False
    if example.expect == ALLOW_EXPECTATION:
        return not decision.flagged
    category = policy.policy.categories[example.expect]
    if category.unsafe:
        return bool(decision.flagged) and decision.top_category == example.expect
    return not decision.flagged and decision.top_category == example.expect
