"""`moderation policy tune`: per-category thresholds for a target precision or recall, from labelled
examples (a labels file, reviewers' decisions, or both) embedded by the checkpoint the policy runs on."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.commands.arguments import since
from consumers.commands.checkpoint import LazyScorer, by_model, model_ids
from consumers.errors import CommandError, ExitCode
from consumers.settings import Settings

if TYPE_CHECKING:
    from moderation.clip_scorer import ClipScorer
    from moderation.policy import LoadedPolicy
    from moderation.tuning import LabelledItem


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np

    from moderation.policy import load_policy
    from moderation.tuning import table, tune

    if args.labels is None and not args.from_reviews:
        raise CommandError.user(
            "policy tune needs labelled examples: --labels FILE (CSV or JSONL), --from-reviews, or both"
        )
    loaded = load_policy(args.policy)
    items = _read_labels(args.labels, loaded) if args.labels is not None else []  # before the model loads
    scorer = LazyScorer(settings, args.model).get()
    embeddings: list[np.ndarray] = []
    labels: list[frozenset[str]] = []
    nothing: list[str] = []  # why each way in gave nothing, for the one error line when all did
    if items:
        matched = _embed_labels(items, scorer, settings)
        print(_matched_summary(items, matched, loaded), file=sys.stderr)
        if not matched:
            nothing.append(_nothing_matched(items, scorer, settings))
        embeddings += [row for _, row in matched.values()]
        labels += [item.categories for item, _ in matched.values()]
    if args.from_reviews:
        reviewed, reviewed_labels = _reviewed(scorer, settings, args.since, loaded)
        if not reviewed:
            scope = f"since {args.since.isoformat(timespec='seconds')}" if args.since else "in the database"
            nothing.append(
                f"no reviewed flagged verdict with a stored embedding {scope} under this checkpoint "
                f"({model_ids(scorer)}); `moderation policy precision` shows what was reviewed"
            )
        embeddings += reviewed
        labels += reviewed_labels
    if not embeddings:
        raise CommandError("nothing to tune on: " + "; and ".join(nothing))
    results = tune(
        loaded, scorer.policy_text(loaded), np.stack(embeddings), labels,
        target_precision=args.target_precision, target_recall=args.target_recall, points=args.points,
    )
    target = (
        f"precision >= {args.target_precision}" if args.target_precision is not None
        else f"recall >= {args.target_recall}"
    )
    print(f"{len(embeddings)} labelled items; policy {loaded.version} ({loaded.policy.scoring} scoring)")
    print(table(results, target))
    if args.json:
        payload = {"policy": loaded.version, "target": target, "categories": [r.as_dict() for r in results]}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return ExitCode.OK


def _read_labels(path: Path, policy: LoadedPolicy) -> list[LabelledItem]:
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


def _embed_labels(
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


def _matched_summary(
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


def _nothing_matched(items: list[LabelledItem], scorer: ClipScorer, settings: Settings) -> str:
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


def _reviewed(
    scorer: ClipScorer, settings: Settings, since: datetime | None, policy: LoadedPolicy
) -> tuple[list[Any], list[frozenset[str]]]:
    """Reviewers' decisions on flagged verdicts of this checkpoint as labelled embeddings."""
    from collections import Counter

    from moderation.storage import open_engine
    from moderation.storage.review_decisions import OutcomeStore

    embeddings: list[Any] = []
    labels: list[frozenset[str]] = []
    with open_engine(settings.database_url) as engine:
        store = OutcomeStore(engine)
        for model_id in scorer.stored_model_ids:  # a verdict has one model id: the sets are disjoint
            rows, row_labels, _ = store.labelled_embeddings(model_id, since)
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


def fraction(text: str) -> float:
    """argparse type for a precision or recall target: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]: precision and recall are fractions, e.g. 0.9")
    return value


def register(policy_commands: Any) -> None:
    """Add tune to the `moderation policy` subcommands."""
    tune_parser = policy_commands.add_parser(
        "tune", help="suggest per-category thresholds for a target precision or recall from labelled examples"
    )
    tune_parser.add_argument("policy", type=Path, help="the policy whose thresholds to tune")
    tune_parser.add_argument(
        "--labels", type=Path, default=None,
        help="CSV or JSONL: content_id or image, and category ('safe' or empty for negatives)",
    )
    tune_parser.add_argument(
        "--from-reviews", action="store_true", help="use reviewers' decisions as labels (with --labels: as well)"
    )
    tune_parser.add_argument("--since", type=since, default=None, help="with --from-reviews: only verdicts since then")
    target = tune_parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-precision", type=fraction, default=None, help="in (0, 1], e.g. 0.9")
    target.add_argument("--target-recall", type=fraction, default=None, help="in (0, 1], e.g. 0.95")
    tune_parser.add_argument("--points", type=int, default=10, help="curve points to print per category")
    tune_parser.add_argument("--model", default=None, help="checkpoint (default: the configured one)")
    tune_parser.add_argument("--json", default=None, help="also write the suggestions as JSON to this file")
    tune_parser.set_defaults(handler=cmd_tune)
