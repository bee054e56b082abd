"""`moderation policy backtest` and `policy shadow-report`: what a candidate policy would change, on
stored traffic (re-decided from stored embeddings) or on live traffic (its recorded shadow verdicts),
counted against the verdicts acted on."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.commands.arguments import since
from consumers.commands.checkpoint import LazyScorer, by_model, model_ids
from consumers.errors import CommandError, ExitCode
from consumers.settings import Settings

if TYPE_CHECKING:
    from moderation.clip_scorer import ClipScorer
    from moderation.storage.embeddings import ModelCoverage


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.backtest import backtest
    from moderation.policy import load_policy
    from moderation.storage import EmbeddingStore, open_engine

    candidate = load_policy(args.policy)
    scorer = LazyScorer(settings, args.model).get()
    text = scorer.policy_text(candidate)
    sources = args.source or ()
    with open_engine(settings.database_url) as engine:
        store = EmbeddingStore(engine)
        chunks = store.scan(scorer.stored_model_ids, since=args.since, sources=sources)
        report = backtest(chunks, text, candidate, examples=args.examples)
        # One grouped count over the same range: it explains an empty backtest and names legacy rows read.
        coverage = store.coverage(since=args.since, sources=sources)
    if report.items == 0:
        raise CommandError(nothing_to_backtest(coverage, scorer, args.since, sources))
    for row in coverage:
        if row.model_id in scorer.legacy_model_ids and row.with_embeddings:
            print(
                f"note: {row.with_embeddings:,} of these rows were stored under the legacy model id "
                f"{row.model_id!r} (the name the checkpoint was loaded by before model ids were content hashes)",
                file=sys.stderr,
            )
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return ExitCode.OK


def nothing_to_backtest(
    coverage: list[ModelCoverage], scorer: ClipScorer, since: datetime | None, sources: Sequence[str]
) -> str:
    """Why a backtest found nothing: no traffic in the range, no embeddings, or another model's embeddings."""
    scope = f"since {since.isoformat(timespec='seconds')}" if since else "in the database"
    if sources:
        scope += f" from source {', '.join(sources)}"
    if not coverage:
        return f"nothing to backtest: no scored verdicts {scope}"
    verdicts = sum(c.verdicts for c in coverage)
    embedded = sum(c.with_embeddings for c in coverage)
    mine = sum(c.verdicts for c in coverage if c.model_id in scorer.stored_model_ids)
    message = f"nothing to backtest: {verdicts:,} scored verdicts {scope}, {embedded:,} with a stored embedding"
    if mine:  # scored by this checkpoint, but nothing to re-decide them from
        message += (
            f"; the {mine:,} scored by this checkpoint ({model_ids(scorer)}) have no stored embedding: "
            f"pruned, or never stored (MODERATION_EMBEDDINGS__STORE)"
        )
    else:
        message += f"; none scored by this checkpoint ({model_ids(scorer)})"
    message += f". Stored by model id: {by_model(coverage)}"
    if embedded:
        message += ". Pass the checkpoint that scored them with --model"
    return message


def cmd_shadow_report(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.backtest import shadow_report
    from moderation.storage import open_engine
    from moderation.storage.shadows import ShadowStore

    with open_engine(settings.database_url) as engine:
        shadows = ShadowStore(engine)
        versions = shadows.versions()
        if not versions:
            print("no shadow verdicts recorded (set MODERATION_POLICY__SHADOW to evaluate a candidate)")
            return ExitCode.OK
        wanted = [v for v in versions if args.policy_version in (None, v[0])]
        if not wanted:
            raise CommandError(
                f"no shadow verdicts for version {args.policy_version!r}; recorded: "
                + ", ".join(f"{v} ({n} rows)" for v, _, n in versions)
            )
        reports = []
        for version, policy_hash, _ in wanted:
            report = shadow_report(shadows.scan(version, since=args.since), version, policy_hash, args.examples)
            reports.append(report)
            print(report.table() + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n", encoding="utf-8")
    return ExitCode.OK


def register(policy_commands: Any) -> None:
    """Add backtest and shadow-report to the `moderation policy` subcommands."""
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
