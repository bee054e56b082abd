"""`moderation policy ...`: the policy editor's tools, from validation to rollout; this module owns the
group and `check`.

- check: validate files and run their golden examples (the policy's own regression tests), here;
- backtest and shadow-report: what a candidate would change on stored or live traffic (`backtest.py`);
- tune: per-category thresholds for a target precision or recall from labelled examples (`tune.py`);
- train: trained heads for unsafe categories from labels, with a report and a policy draft (`train.py`);
- precision: what reviewers said of the flags (`outcomes.py`, with the reviewers' decisions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.commands import backtest, train, tune
from consumers.commands.checkpoint import LazyScorer
from consumers.errors import ExitCode
from consumers.settings import Settings
from moderation.exceptions import ModerationError, PolicyError

if TYPE_CHECKING:
    from moderation.policy import LoadedPolicy


def configured_policy_files(settings: Settings) -> list[Path]:
    """Every policy file the settings name: the default, the per-source ones and the shadows."""
    policy = settings.policy
    return list(dict.fromkeys([policy.path, *policy.sources.values(), *policy.shadow]))


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.golden import run_examples
    from moderation.policy import load_policy

    scorer = LazyScorer(settings, args.model)
    status = ExitCode.OK
    checked: list[LoadedPolicy] = []
    for path in args.files or configured_policy_files(settings):
        try:
            loaded = load_policy(path)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            status = ExitCode.FAILED
            continue
        checked.append(loaded)
        policy = loaded.policy
        print(f"{loaded.path}: ok  version={loaded.version}  sha256={loaded.sha256[:16]}  scoring={policy.scoring}")
        for name, category in policy.categories.items():
            rule = "safe"
            if category.threshold is not None and category.action is not None:
                rule = f"threshold {category.threshold:.2f} -> {category.action.value}"
                if category.uncertain_margin:
                    rule += f", uncertain within {category.uncertain_margin:.2f}"
            if category.head is not None:
                rule += f", scored by trained head {category.head.file}"
            print(f"  {name:<16} {len(category.prompts):>3} prompts  {rule}")
        problem = _head_model_problem(loaded, settings, args.model)
        if problem:
            print(f"{loaded.path}: {problem}", file=sys.stderr)
            status = ExitCode.FAILED
        if not policy.examples or args.skip_examples:
            continue
        try:
            results = run_examples(loaded, scorer.get())
        except ModerationError as exc:
            print(f"{loaded.path}: cannot run {len(policy.examples)} golden examples: {exc}", file=sys.stderr)
            print("  pass --model with a local checkpoint, or --skip-examples to validate only", file=sys.stderr)
            status = ExitCode.FAILED
            continue
        failed = [r for r in results if not r.passed]
        print(f"  golden examples: {len(results) - len(failed)}/{len(results)} pass")
        for result in failed:
            expected = result.example.expect + (
                "" if result.example.uncertain is None else f" (uncertain={result.example.uncertain})"
            )
            print(f"  FAIL {result.example.image}: expected {expected}, got {result.got}", file=sys.stderr)
        if failed:
            status = ExitCode.FAILED
    for warning in _version_warnings(checked, settings):
        print(f"WARNING: {warning}", file=sys.stderr)
    return status


def _head_model_problem(loaded: LoadedPolicy, settings: Settings, model: str | None) -> str | None:
    """A head trained on another checkpoint's embeddings would be refused by every worker running this
    one: say so here. The checkpoint's id is a hash of its files (no model load); a checkpoint that is not
    on this machine cannot be compared, which is only a note."""
    if not loaded.heads:
        return None
    from moderation.checkpoints import checkpoint_id, resolve_checkpoint

    name = model or settings.model.name_or_path
    try:
        model_id = checkpoint_id(resolve_checkpoint(name))
    except ModerationError:
        print(f"note: checkpoint {name} is not here: its trained heads were not compared with it", file=sys.stderr)
        return None
    wrong = [f"{category} (trained on {head.model_id})" for category, head in loaded.heads.items()
             if head.model_id != model_id]
    if not wrong:
        return None
    return (f"trained heads of another model: {', '.join(wrong)}; checkpoint {name} is {model_id}. "
            "Train them again on this model (moderation policy train)")


def _version_warnings(policies: list[LoadedPolicy], settings: Settings) -> list[str]:
    """One version must mean one content: among the files checked, and against what the database recorded.

    Warnings, not failures: the files themselves are valid. The database is read only when one is
    configured and exists (a missing SQLite file is not created just to be compared with)."""
    warnings = []
    by_version: dict[str, dict[str, str]] = {}
    for policy in policies:
        by_version.setdefault(policy.version, {}).setdefault(policy.sha256, policy.path)
    for version, hashes in by_version.items():
        if len(hashes) > 1:
            files = ", ".join(f"{path} ({policy_hash[:16]})" for policy_hash, path in hashes.items())
            warnings.append(f"version {version!r} has different content in {files}: give each its own version")
    url = _existing_database(settings)
    if url is None or not policies:
        return warnings
    from moderation.storage import open_engine
    from moderation.storage.policy_versions import version_conflicts

    with open_engine(url) as engine:
        try:
            warnings += [conflict.message() for conflict in version_conflicts(engine, policies)]
        except ModerationError as exc:  # an unreachable or unmigrated database: the files are still checked
            print(f"note: could not compare with recorded verdicts: {exc}", file=sys.stderr)
    return warnings


def _existing_database(settings: Settings) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = settings.database_url
    try:
        parsed = make_url(url)
    except ArgumentError:  # an unusable URL is reported by the commands that need the database
        return None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or not Path(database).is_file():
            return None
    return url


def register(commands: Any) -> Any:
    """Add the `policy` group with check, backtest, shadow-report and tune; return its subcommands, to
    which `outcomes.register` adds precision."""
    policy = commands.add_parser("policy", help="policy files")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    check = policy_commands.add_parser(
        "check", help="validate policy files and run their golden examples (default: every configured file)"
    )
    check.add_argument("files", nargs="*", type=Path, help="policy YAML files")
    check.add_argument("--model", default=None, help="checkpoint for golden examples (default: the configured one)")
    check.add_argument("--skip-examples", action="store_true", help="validate only; do not run golden examples")
    check.set_defaults(handler=cmd_check)
    backtest.register(policy_commands)
    tune.register(policy_commands)
    train.register(policy_commands)
    return policy_commands
