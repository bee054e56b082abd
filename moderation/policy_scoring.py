"""Scoring a batch's embeddings under the policy in force for each event's source.

Events from different sources may be decided by different policies (moderation/policy_book.py). The
embeddings of one batch are grouped by policy, so each policy costs one matrix product against its
text embeddings however many sources share it, and every image keeps its position in the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from moderation.contracts import Scorer
from moderation.embedding import Embedded
from moderation.events import ImageEvent
from moderation.policy import LoadedPolicy
from moderation.policy_book import PolicyBook
from moderation.verdict import LoadFailure, Scores


def score_by_source(
    scorer: Scorer, book: PolicyBook, events: Sequence[ImageEvent], embedded: Mapping[int, Embedded | LoadFailure]
) -> dict[int, Scores | LoadFailure]:
    """Scores for every embedded image (keys as in `embedded`, positions in `events`) under its source's
    policy; an image that could not be embedded keeps its failure."""
    groups: dict[str, tuple[LoadedPolicy, list[int]]] = {}
    for i in embedded:
        policy = book.for_source(events[i].source)
        groups.setdefault(policy.sha256, (policy, []))[1].append(i)
    scored: dict[int, Scores | LoadFailure] = {}
    for policy, indices in groups.values():
        scored.update(score_group(scorer, policy, indices, embedded))
    return scored


def score_group(
    scorer: Scorer, policy: LoadedPolicy, indices: Sequence[int], embedded: Mapping[int, Embedded | LoadFailure]
) -> dict[int, Scores | LoadFailure]:
    """Scores under `policy` for the images at `indices`, from their embeddings, in one call."""
    result: dict[int, Scores | LoadFailure] = {}
    usable: list[Embedded] = []
    usable_at: list[int] = []
    for i in indices:
        found = embedded[i]
        if isinstance(found, LoadFailure):
            result[i] = found
        else:
            usable.append(found)
            usable_at.append(i)
    if usable:
        stacked = np.stack([found.embedding for found in usable])
        result.update(zip(usable_at, scorer.score_embeddings(stacked, policy), strict=True))
    return result
