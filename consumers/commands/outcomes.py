"""`moderation outcomes run` and `moderation policy precision`: reviewers' decisions in and out.

The consumer (`consumers.outcome_consumer`) stores what reviewers decided about flagged items; the precision
report turns that into the number policy editors ask first: of what a category flagged, how much did
reviewers agree with?
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from consumers.commands.arguments import since
from consumers.errors import ExitCode
from consumers.settings import Settings

if TYPE_CHECKING:  # the storage layer loads on use: other commands start without it
    from moderation.storage.review_decisions import CategoryPrecision


def cmd_outcomes_run(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.signals import install_stop_signals

    stop = threading.Event()
    install_stop_signals(stop)  # before the heavy imports: a SIGTERM during start-up is a clean stop
    import structlog

    from consumers.outcome_consumer import group_id, run_outcomes

    structlog.get_logger("moderation").info(
        "starting outcomes consumer", topic=settings.kafka.review_outcomes_topic, group=group_id(settings),
        settings=settings.masked(),
    )
    run_outcomes(settings, stop)
    return ExitCode.OK


def cmd_policy_precision(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.storage import open_engine
    from moderation.storage.review_decisions import OutcomeStore

    # review_outcomes arrived in revision 0002: an older schema is refused before anything is read.
    with open_engine(settings.database_url, require_schema=True) as engine:
        rows = OutcomeStore(engine).precision_report(since=args.since, policy_version=args.policy_version)
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        print(precision_table(rows))
    return ExitCode.OK


def precision_table(rows: Sequence[CategoryPrecision]) -> str:
    """One line per flagged category; the verdicts sent to review as uncertain are split out on the right."""
    if not rows:
        return "no flagged verdicts in range"

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        f"{'category':<20} {'flagged':>8} {'reviewed':>8} {'confirmed':>9} {'overturned':>10} {'precision':>9}"
        f" {'recategorised':>13}   {'uncertain':>9} {'reviewed':>8} {'precision':>9}"
    ]
    for row in rows:
        t, u = row.total, row.uncertain
        lines.append(
            f"{row.category:<20} {t.flagged:>8} {t.reviewed:>8} {t.confirmed:>9} {t.overturned:>10} "
            f"{share(t.precision):>9} {row.recategorised:>13}   {u.flagged:>9} {u.reviewed:>8} {share(u.precision):>9}"
        )
    return "\n".join(lines)


def register(commands: Any, policy_commands: Any) -> None:
    """Add `outcomes run` to the top-level commands and `precision` to the `policy` subcommands."""
    outcomes = commands.add_parser("outcomes", help="reviewers' decisions on flagged items")
    outcomes_commands = outcomes.add_subparsers(dest="outcomes_command", required=True, metavar="SUBCOMMAND")
    run = outcomes_commands.add_parser(
        "run", help="consume the review-outcomes topic into the database until SIGTERM/SIGINT"
    )
    run.set_defaults(handler=cmd_outcomes_run)

    precision = policy_commands.add_parser(
        "precision", help="per category: how many flagged items reviewers confirmed or overturned"
    )
    precision.add_argument(
        "--since", type=since, default=None, help="verdicts since (30m, 12h, 7d, 2w or an ISO date); default: all"
    )
    precision.add_argument("--policy-version", default=None, help="only verdicts made under this policy version")
    precision.add_argument("--json", action="store_true", help="print JSON instead of a table")
    precision.set_defaults(handler=cmd_policy_precision)
