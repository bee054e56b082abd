"""`moderation policy check | backtest | shadow-report | tune`: the policy editor's tools, from validation to rollout.

- check: validate files and run their golden examples (the policy's own regression tests);
- backtest: re-decide stored traffic under a candidate from stored embeddings, and count what changes;
- shadow-report: what shadow policies decided on live traffic, against the verdicts acted on;
- tune: suggest per-category thresholds for a target precision or recall from labelled examples.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from moderation.exceptions import ModerationError, PolicyError
from moderation.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1


class _LazyScorer:
    """The model, loaded on first need: `policy check` on files without examples never loads it."""

    def __init__(self, settings: Settings, model: str | None) -> None:
        self._settings, self._model, self._scorer = settings, model, None

    def get(self) -> Any:
        if self._scorer is None:
            from moderation.scorer import ClipScorer

            self._scorer = ClipScorer.from_settings(self._settings.model, self._model)
        return self._scorer


def configured_policy_files(settings: Settings) -> list[Path]:
    """Every policy file the settings name: the default, the per-source ones and the shadows."""
    policy = settings.policy
    return list(dict.fromkeys([policy.path, *policy.sources.values(), *policy.shadow]))


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.golden import run_examples
    from moderation.policy import load_policy

    scorer = _LazyScorer(settings, args.model)
    status = EXIT_OK
    for path in args.files or configured_policy_files(settings):
        try:
            loaded = load_policy(path)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            status = EXIT_FAILED
            continue
        policy = loaded.policy
        print(f"{loaded.path}: ok  version={loaded.version}  sha256={loaded.sha256[:16]}  scoring={policy.scoring}")
        for name, category in policy.categories.items():
            rule = "safe"
            if category.threshold is not None and category.action is not None:
                rule = f"threshold {category.threshold:.2f} -> {category.action.value}"
                if category.uncertain_margin:
                    rule += f", uncertain within {category.uncertain_margin:.2f}"
            print(f"  {name:<16} {len(category.prompts):>3} prompts  {rule}")
        if not policy.examples or args.skip_examples:
            continue
        try:
            results = run_examples(loaded, scorer.get())
        except ModerationError as exc:
            print(f"{loaded.path}: cannot run {len(policy.examples)} golden examples: {exc}", file=sys.stderr)
            print("  pass --model with a local checkpoint, or --skip-examples to validate only", file=sys.stderr)
            status = EXIT_FAILED
            continue
        failed = [r for r in results if not r.passed]
        print(f"  golden examples: {len(results) - len(failed)}/{len(results)} pass")
        for result in failed:
            expected = result.example.expect + (
                "" if result.example.uncertain is None else f" (uncertain={result.example.uncertain})"
            )
            print(f"  FAIL {result.example.image}: expected {expected}, got {result.got}", file=sys.stderr)
        if failed:
            status = EXIT_FAILED
    return status


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.backtest import backtest
    from moderation.policy import load_policy
    from moderation.storage import EmbeddingStore, create_engine_for
    candidate = load_policy(args.policy)
    since = args.since
    scorer = _LazyScorer(settings, args.model).get()
    text = scorer.policy_text(candidate)
    engine = create_engine_for(settings.database_url)
    try:
        chunks = EmbeddingStore(engine).scan(scorer.model_id, since=since, sources=args.source or ())
        report = backtest(chunks, text, candidate, examples=args.examples)
    finally:
        engine.dispose()
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return EXIT_OK


def cmd_shadow_report(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.backtest import shadow_report
    from moderation.storage import create_engine_for
    from moderation.storage.shadows import ShadowStore

    engine = create_engine_for(settings.database_url)
    try:
        shadows = ShadowStore(engine)
        versions = shadows.versions()
        if not versions:
            print("no shadow verdicts recorded (set MODERATION_POLICY__SHADOW to evaluate a candidate)")
            return EXIT_OK
        wanted = [v for v in versions if args.policy_version in (None, v[0])]
        if not wanted:
            print(f"no shadow verdicts for version {args.policy_version!r}; recorded: "
                  + ", ".join(f"{v} ({n} rows)" for v, _, n in versions), file=sys.stderr)
            return EXIT_FAILED
        reports = []
        for version, policy_hash, _ in wanted:
            report = shadow_report(shadows.scan(version, since=args.since), version, policy_hash, args.examples)
            reports.append(report)
            print(report.table() + "\n")
    finally:
        engine.dispose()
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n", encoding="utf-8")
    return EXIT_OK


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np

    from moderation.offline import embed_files
    from moderation.policy import load_policy
    from moderation.storage import EmbeddingStore, create_engine_for
    from moderation.tuning import load_labels, table, tune

    loaded = load_policy(args.policy)
    scorer = _LazyScorer(settings, args.model).get()
    embeddings: list[np.ndarray] = []
    labels: list[frozenset[str]] = []
    skipped = 0
    if args.labels:
        items = load_labels(args.labels)
        by_content: dict[str, np.ndarray] = {}
        content_ids = [item.content_id for item in items if item.content_id is not None]
        if content_ids:
            engine = create_engine_for(settings.database_url)
            try:
                by_content = EmbeddingStore(engine).for_content_ids(scorer.model_id, content_ids)
            finally:
                engine.dispose()
        images = [i for i, item in enumerate(items) if item.image is not None]
        from_files = embed_files(scorer, [items[i].image for i in images])  # type: ignore[misc]
        by_image = {images[position]: row for position, row in from_files.embeddings.items()}
        for position, reason in from_files.failures.items():
            print(f"skipped {items[images[position]].image}: {reason}", file=sys.stderr)
        for i, item in enumerate(items):
            row = by_content.get(item.content_id) if item.content_id is not None else by_image.get(i)
            if row is None:
                skipped += 1
                continue
            embeddings.append(row)
            labels.append(item.categories)
    if args.from_reviews:
        from moderation.storage.outcomes import OutcomeStore
        from moderation.timespec import parse_since

        engine = create_engine_for(settings.database_url)
        try:
            since = parse_since(args.since) if args.since else None
            reviewed, reviewed_labels, _ = OutcomeStore(engine).labelled_embeddings(scorer.model_id, since)
        finally:
            engine.dispose()
        embeddings.extend(reviewed)
        labels.extend(reviewed_labels)
    if not embeddings:
        print("no labelled items with an embedding: nothing to tune on", file=sys.stderr)
        return EXIT_FAILED
    if skipped:
        print(f"skipped {skipped} labelled items without a stored embedding for {scorer.model_id}", file=sys.stderr)
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
    return EXIT_OK


def since(text: str) -> datetime:
    """argparse type for --since: a bad value is a usage error (exit 2), not a traceback."""
    from moderation.timespec import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(policy_commands: Any) -> None:
    """Add check, backtest and tune to the `moderation policy` subcommands."""
    check = policy_commands.add_parser(
        "check", help="validate policy files and run their golden examples (default: every configured file)"
    )
    check.add_argument("files", nargs="*", type=Path, help="policy YAML files")
    check.add_argument("--model", default=None, help="checkpoint for golden examples (default: the configured one)")
    check.add_argument("--skip-examples", action="store_true", help="validate only; do not run golden examples")
    check.set_defaults(handler=cmd_check)

    backtest = policy_commands.add_parser(
        "backtest", help="re-decide stored traffic under a candidate policy, from stored embeddings"
    )
    backtest.add_argument("policy", type=Path, help="the candidate policy file")
    backtest.add_argument(
        "--since", type=since, default=None, help="look-back (30m, 12h, 7d, 2w) or ISO date; default: all"
    )
    backtest.add_argument("--source", action="append", help="only events from this source (repeatable)")
    backtest.add_argument("--examples", type=int, default=5, help="example content ids per change (default 5)")
    backtest.add_argument("--model", default=None, help="checkpoint (default: the configured one)")
    backtest.add_argument("--json", default=None, help="also write the report as JSON to this file")
    backtest.set_defaults(handler=cmd_backtest)

    shadow = policy_commands.add_parser(
        "shadow-report", help="compare shadow policies' verdicts on live traffic with the verdicts acted on"
    )
    shadow.add_argument("--policy-version", default=None, help="one shadow version (default: every one recorded)")
    shadow.add_argument("--since", type=since, default=None, help="look-back (30m, 12h, 7d, 2w) or ISO date")
    shadow.add_argument("--examples", type=int, default=5, help="example content ids per change (default 5)")
    shadow.add_argument("--json", default=None, help="also write the reports as JSON to this file")
    shadow.set_defaults(handler=cmd_shadow_report)

    tune_parser = policy_commands.add_parser(
        "tune", help="suggest per-category thresholds for a target precision or recall from labelled examples"
    )
    tune_parser.add_argument("policy", type=Path, help="the policy whose thresholds to tune")
    tune_parser.add_argument(
        "--labels", type=Path, default=None,
        help="CSV or JSONL: content_id or image, and category ('safe' or empty for negatives)",
    )
    tune_parser.add_argument("--from-reviews", action="store_true", help="also use reviewers' decisions as labels")
    tune_parser.add_argument("--since", type=since, default=None, help="with --from-reviews: only verdicts since then")
    target = tune_parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-precision", type=float, default=None, help="e.g. 0.9")
    target.add_argument("--target-recall", type=float, default=None, help="e.g. 0.95")
    tune_parser.add_argument("--points", type=int, default=10, help="curve points to print per category")
    tune_parser.add_argument("--model", default=None, help="checkpoint (default: the configured one)")
    tune_parser.add_argument("--json", default=None, help="also write the suggestions as JSON to this file")
    tune_parser.set_defaults(handler=cmd_tune)
