"""Labelled examples for `moderation policy tune` and `policy train`: a labels file (content ids of stored
verdicts, or image files), labelled image folders, and reviewers' decisions, as embeddings of the
checkpoint the policy runs on."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.commands.checkpoint import by_model, model_ids
from consumers.errors import CommandError
from consumers.settings import Settings

if TYPE_CHECKING:
    from moderation.clip_scorer import ClipScorer
    from moderation.policy import LoadedPolicy
    from moderation.tuning import LabelledItem


def read_labels(path: Path, policy: LoadedPolicy) -> list[LabelledItem]:
    """The labels file, refused (exit 2) when it cannot be read or names categories the policy lacks."""
    from moderation.tuning import LabelsError, describe_unknown, load_labels, unknown_labels

    try:
        items = load_labels(path)
    except LabelsError as exc:
        raise CommandError.user(str(exc)) from exc
    unknown = unknown_labels((item.categories for item in items), policy)
    if unknown:
        raise CommandError.user(f"labels file {path}: {describe_unknown(unknown, policy)}")
    return items


def embed_labels(
    items: list[LabelledItem], scorer: ClipScorer, settings: Settings
) -> dict[int, tuple[LabelledItem, Any]]:
    """Position -> (item, float16 embedding) for every labelled item that could be embedded: content ids
    from their stored verdicts' embeddings (under this checkpoint's ids), image files through the model."""
    from moderation.offline import embed_files
    from moderation.storage import EmbeddingStore, open_engine

    by_content: dict[str, Any] = {}
    content_ids = [item.content_id for item in items if item.content_id is not None]
    if content_ids:
        with open_engine(settings.database_url) as engine:
            by_content = EmbeddingStore(engine).for_content_ids(scorer.stored_model_ids, content_ids)
    images = [i for i, item in enumerate(items) if item.image is not None]
    from_files = embed_files(scorer, [items[i].image for i in images])  # type: ignore[misc]
    for position, reason in from_files.failures.items():
        print(f"skipped {items[images[position]].image}: {reason}", file=sys.stderr)
    rows = {images[position]: row for position, row in from_files.embeddings.items()}
    rows.update({i: by_content[item.content_id] for i, item in enumerate(items) if item.content_id in by_content})
    return {i: (items[i], rows[i]) for i in sorted(rows)}


def matched_summary(
    items: list[LabelledItem], matched: dict[int, tuple[LabelledItem, Any]], policy: LoadedPolicy
) -> str:
    """How many labels were read, how many have an embedding, and per unsafe category how many positives."""
    content = sum(item.content_id is not None for item in items)
    positives = dict.fromkeys(policy.policy.unsafe_categories, 0)
    negatives = 0
    for item, _ in matched.values():
        hits = [name for name in item.categories if name in positives]
        negatives += not hits
        for name in hits:
            positives[name] += 1
    per_category = ", ".join(f"{name} {count}" for name, count in positives.items())
    line = (
        f"labels: {len(items)} read ({content} content ids, {len(items) - content} image files), "
        f"{len(matched)} matched: {per_category}, negatives {negatives}"
    )
    unmatched = next((item for i, item in enumerate(items) if i not in matched), None)
    if unmatched is not None:
        line += f"; {len(items) - len(matched)} without an embedding, e.g. {unmatched.content_id or unmatched.image}"
    return line


def nothing_matched(items: list[LabelledItem], scorer: ClipScorer, settings: Settings) -> str:
    """Why no labelled content id found an embedding: no verdicts for them, or verdicts under other models."""
    from moderation.storage import EmbeddingStore, open_engine

    content_ids = [item.content_id for item in items if item.content_id is not None]
    reason = f"no labelled item has an embedding under this checkpoint ({model_ids(scorer)})"
    if not content_ids:
        return reason + "; none of the image files could be read"
    with open_engine(settings.database_url) as engine:
        coverage = EmbeddingStore(engine).coverage(content_ids=content_ids)
    if not coverage:
        return reason + f"; no scored verdict has any of the {len(content_ids)} labelled content ids"
    return reason + f"; scored verdicts of the labelled content ids, by model id: {by_model(coverage)}"


def labels_from_reviews(
    scorer: ClipScorer, settings: Settings, since: datetime | None, policy: LoadedPolicy
) -> tuple[list[Any], list[frozenset[str]]]:
    """Reviewers' decisions on verdicts of this checkpoint as labelled embeddings: the console's decisions
    (flagged, uncertain and audited items, a label per category), then the review tool's outcomes on
    flagged verdicts the console did not decide."""
    from collections import Counter

    from moderation.storage import open_engine
    from moderation.storage.review_decisions import OutcomeStore

    embeddings: list[Any] = []
    labels: list[frozenset[str]] = []
    with open_engine(settings.database_url) as engine:
        store = OutcomeStore(engine)
        for model_id in scorer.stored_model_ids:  # a verdict has one model id: the sets are disjoint
            for rows, row_labels, _ in (
                store.console_labelled_embeddings(model_id, since),
                store.labelled_embeddings(model_id, since, skip_console_decided=True),
            ):
                embeddings += list(rows)
                labels += row_labels
    unknown = Counter(name for item in labels for name in item if name not in policy.policy.categories)
    if unknown:
        # Reviews label the categories of the policy they were flagged under; a renamed or removed
        # category would otherwise count its confirmed flags as negatives for every category.
        raise CommandError(
            f"reviewers' decisions name categories policy {policy.version} does not have: "
            + ", ".join(f"{name!r} ({count})" for name, count in unknown.most_common())
            + f"; its categories: {', '.join(policy.policy.categories)}. Tune with --labels instead"
        )
    return embeddings, labels


def gather_labelled(
    items: list[LabelledItem], from_reviews: bool, since: datetime | None, scorer: ClipScorer, settings: Settings,
    policy: LoadedPolicy, purpose: str,
) -> tuple[Any, list[frozenset[str]]]:
    """Embeddings [N, dim] (float16) and per item its true categories, from labelled `items` (embedded by
    `scorer` or found stored under its ids) and, with `from_reviews`, reviewers' decisions; a
    CommandError saying why when nothing could be used."""
    import numpy as np

    embeddings: list[Any] = []
    labels: list[frozenset[str]] = []
    nothing: list[str] = []  # why each way in gave nothing, for the one error line when all did
    if items:
        matched = embed_labels(items, scorer, settings)
        print(matched_summary(items, matched, policy), file=sys.stderr)
        if not matched:
            nothing.append(nothing_matched(items, scorer, settings))
        embeddings += [row for _, row in matched.values()]
        labels += [item.categories for item, _ in matched.values()]
    if from_reviews:
        reviewed, reviewed_labels = labels_from_reviews(scorer, settings, since, policy)
        if not reviewed:
            scope = f"since {since.isoformat(timespec='seconds')}" if since else "in the database"
            nothing.append(
                f"no reviewed flagged verdict with a stored embedding {scope} under this checkpoint "
                f"({model_ids(scorer)}); `moderation policy precision` shows what was reviewed"
            )
        else:
            print(f"reviewers' decisions: {len(reviewed)} labelled items", file=sys.stderr)
        embeddings += reviewed
        labels += reviewed_labels
    if not embeddings:
        raise CommandError(f"nothing to {purpose} on: " + "; and ".join(nothing))
    return np.stack(embeddings), labels


def labels_from_folders(directory: Path, policy: LoadedPolicy) -> list[LabelledItem]:
    """Labelled image folders: `DIRECTORY/<category>/*` holds images of that category, and `safe/`,
    `none/` or a safe category's folder images in no unsafe category. Refused (exit 2) when the directory
    is missing, a folder names no category, or no image is found."""
    from moderation.tuning import NEGATIVE_LABELS, LabelledItem

    if not directory.is_dir():
        raise CommandError.user(f"--images {directory}: not a directory")
    items: list[LabelledItem] = []
    unknown = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        name = folder.name.strip().lower()
        if name not in policy.policy.categories and name not in NEGATIVE_LABELS:
            unknown.append(folder.name)
            continue
        unsafe = name in policy.policy.unsafe_categories
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        items += [LabelledItem(frozenset({name}) if unsafe else frozenset(), image=path) for path in files]
    if unknown:
        raise CommandError.user(
            f"--images {directory}: folders that name no category of policy {policy.version}: "
            f"{', '.join(unknown)} (its categories: {', '.join(policy.policy.categories)}; 'safe' or 'none' "
            "for negatives)"
        )
    if not items:
        raise CommandError.user(f"--images {directory}: no image files in category folders (DIRECTORY/<category>/*)")
    return items
