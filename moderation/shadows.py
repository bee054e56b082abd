"""Shadow policies: what a candidate policy would decide for live traffic, recorded and never acted on.

A shadow scores the same embeddings as the policy in force (no extra forward pass), for every image
that the policy in force could score. Shadows are observations: one that fails is logged and leaves
every verdict as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from moderation.contracts import Scorer
from moderation.decision import decide
from moderation.embedding import Embedded
from moderation.events import ImageEvent
from moderation.policy import LoadedPolicy
from moderation.policy_scoring import score_group
from moderation.verdict import LoadFailure, Scores, ShadowVerdict

log = logging.getLogger(__name__)


def shadow_verdicts(
    scorer: Scorer,
    shadows: Sequence[LoadedPolicy],
    events: Sequence[ImageEvent],
    embedded: Mapping[int, Embedded | LoadFailure],
    scored: Mapping[int, Scores | LoadFailure],
) -> dict[int, list[ShadowVerdict]]:
    """Per embedded image (keys as in `embedded`), what each shadow decided, in `shadows` order."""
    into: dict[int, list[ShadowVerdict]] = {i: [] for i in embedded}
    indices = [i for i in embedded if not isinstance(scored.get(i), LoadFailure)]
    for shadow in shadows:
        try:
            for i, outcome in score_group(scorer, shadow, indices, embedded).items():
                if isinstance(outcome, LoadFailure):
                    continue
                decision = decide(outcome.probabilities, shadow.policy)
                into[i].append(ShadowVerdict.of(events[i], shadow, decision, outcome))
        except Exception:  # noqa: BLE001 - shadows are observations: log, never fail the batch
            log.exception("shadow policy %s (%s) failed on a batch", shadow.version, shadow.path)
    return into
