"""`moderation policy tune`: per-category thresholds for a target precision or recall, from labelled
examples (a labels file, reviewers' decisions, or both) embedded by the checkpoint the policy runs on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from consumers.commands.arguments import since
from consumers.commands.checkpoint import LazyScorer
from consumers.commands.labels import gather_labelled, read_labels
from consumers.errors import CommandError, ExitCode
from consumers.settings import Settings


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.policy import load_policy
    from moderation.tuning import table, tune

    loaded = load_policy(args.policy)
    items = read_labels(args.labels, loaded) if args.labels is not None else []  # before the model loads
    if not items and not args.from_reviews:
        raise CommandError.user(
            "policy tune needs labelled examples: --labels FILE (CSV or JSONL), --from-reviews, or both"
        )
    scorer = LazyScorer(settings, args.model).get()
    embeddings, labels = gather_labelled(items, args.from_reviews, args.since, scorer, settings, loaded, "tune")
    results = tune(
        loaded, scorer.policy_text(loaded), embeddings, labels,
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
