"""One verdict per event of a batch, in order, from what loading, embedding and scoring gave it.

Each event is decided under its source's policy. Whatever went wrong on the way - a load failure, a
failed embedding, scores that do not fit the policy - becomes that event's ``error`` verdict; nothing
here fails the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from moderation.audit import audit_draw
from moderation.decision import decide
from moderation.embedding import Embedded
from moderation.events import ImageEvent
from moderation.images import LoadedImage
from moderation.policy_book import PolicyBook
from moderation.verdict import REASON_SCORE_FAILED, LoadFailure, Scores, ShadowVerdict, Verdict


@dataclass(frozen=True)
class ScoredBatch:
    """What the steps of `Moderator.score` gave, by position in the batch."""

    loaded: Sequence[LoadedImage | LoadFailure]  # every event, after the deferred decode
    embedded: Mapping[int, Embedded | LoadFailure] = field(default_factory=dict)  # the loaded ones
    scored: Mapping[int, Scores | LoadFailure] = field(default_factory=dict)  # under their source's policy
    shadows: Mapping[int, Sequence[ShadowVerdict]] = field(default_factory=dict)
    score_ms: float = 0.0  # per image: embedding and scoring, over the images that loaded


def build_verdicts(
    events: Sequence[ImageEvent], book: PolicyBook, model_id: str, batch: ScoredBatch, *, keep_embeddings: bool
) -> list[Verdict]:
    """The verdicts of `events`, in order; with `keep_embeddings` the ok ones carry their embedding."""
    verdicts = []
    for i, event in enumerate(events):
        policy = book.for_source(event.source)
        item = batch.loaded[i]
        if isinstance(item, LoadFailure):
            verdicts.append(Verdict.error(event, policy, item, model_id=model_id))
            continue
        outcome = batch.scored[i]
        if not isinstance(outcome, LoadFailure):
            try:
                decision = decide(outcome.probabilities, policy.policy)
            except ValueError as exc:  # scores that do not fit the policy: this event's error, not the batch's
                outcome = LoadFailure(REASON_SCORE_FAILED, str(exc))
            else:
                found = batch.embedded.get(i)
                embedded = found if isinstance(found, Embedded) else None
                verdicts.append(Verdict.ok(
                    event, policy, decision, outcome,
                    model_id=model_id, image_sha256=item.sha256, load_ms=item.load_ms, score_ms=batch.score_ms,
                    embedding_reused=embedded.reused if embedded is not None else False,
                    embedding=embedded.embedding if embedded is not None and keep_embeddings else None,
                    shadows=tuple(batch.shadows.get(i, ())),
                    audited=not decision.flagged and audit_draw(event.event_id, policy.policy.audit_rate),
                    keep_media=not policy.policy.forbids_media(outcome.probabilities, decision.top_category),
                    pdq=item.pdq,
                ))
                continue
        # It loaded, so its identity and load time are kept on the error verdict.
        verdicts.append(
            Verdict.error(event, policy, outcome, model_id=model_id, image_sha256=item.sha256, load_ms=item.load_ms,
                          pdq=item.pdq)
        )
    return verdicts
