"""The checkpoint a policy command scores with: loaded on first need, and named in messages so that an
operator can tell which stored rows it reads (its content-hash model id and its legacy names)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from consumers.settings import Settings

if TYPE_CHECKING:
    from moderation.clip_scorer import ClipScorer
    from moderation.storage.embeddings import ModelCoverage


class LazyScorer:
    """The model, loaded on first need: `policy check` on files without examples never loads it."""

    def __init__(self, settings: Settings, model: str | None) -> None:
        self._settings, self._model = settings, model
        self._scorer: ClipScorer | None = None

    def get(self) -> ClipScorer:
        if self._scorer is None:
            from moderation.clip_scorer import ClipScorer

            self._scorer = ClipScorer.from_settings(self._settings.model, self._model)
        return self._scorer


def model_ids(scorer: ClipScorer) -> str:
    """The ids stored rows of this checkpoint are looked up under, for a message."""
    text = f"model id {scorer.model_id}, loaded as {scorer.model_name}"
    if scorer.legacy_model_ids:
        text += "; also looked under " + ", ".join(repr(name) for name in scorer.legacy_model_ids)
    return text


def by_model(coverage: list[ModelCoverage], limit: int = 5) -> str:
    """What is stored under which model ids, most first, for a message that explains finding nothing."""
    shown = [f"{c.model_id}: {c.verdicts:,} ({c.with_embeddings:,} with embeddings)" for c in coverage[:limit]]
    if len(coverage) > limit:
        shown.append(f"{len(coverage) - limit} more")
    return "; ".join(shown)
