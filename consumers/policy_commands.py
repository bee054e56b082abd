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
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.errors import CommandError, ExitCode, UsageError
from moderation.exceptions import ModerationError, PolicyError
from moderation.settings import Settings

if TYPE_CHECKING:
    from moderation.clip_scorer import ClipScorer
    from moderation.policy import LoadedPolicy
    from moderation.storage.embeddings import ModelCoverage
    from moderation.tuning import LabelledItem


class _LazyScorer:
    """The model, loaded on first need: `policy check` on files without examples never loads it."""

    def __init__(self, settings: Settings, model: str | None) -> None:
        self._settings, self._model, self._scorer = settings, model, None

    def get(self) -> Any:
        if self._scorer is None:
            from moderation.clip_scorer import ClipScorer

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
            print(f"  {name:<16} {len(category.prompts):>3} prompts  {rule}")
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
    from moderation.storage import create_engine_for
    from moderation.storage.policy_versions import version_conflicts

    engine = create_engine_for(url)
    try:
        warnings += [conflict.message() for conflict in version_conflicts(engine, policies)]
    except ModerationError as exc:  # an unreachable or unmigrated database: the files are still checked
        print(f"note: could not compare with recorded verdicts: {exc}", file=sys.stderr)
    finally:
        engine.dispose()
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


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.backtest import backtest
    from moderation.policy import load_policy
    from moderation.storage import EmbeddingStore, create_engine_for

    candidate = load_policy(args.policy)
    scorer = _LazyScorer(settings, args.model).get()
    text = scorer.policy_text(candidate)
    sources = args.source or ()
    engine = create_engine_for(settings.database_url)
    try:
        store = EmbeddingStore(engine)
        chunks = store.scan(scorer.stored_model_ids, since=args.since, sources=sources)
        report = backtest(chunks, text, candidate, examples=args.examples)
        # One grouped count over the same range: it explains an empty backtest and names legacy rows read.
        coverage = store.coverage(since=args.since, sources=sources)
    finally:
        engine.dispose()
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
            f"; the {mine:,} scored by this checkpoint ({_model_ids(scorer)}) have no stored embedding: "
            f"pruned, or never stored (MODERATION_EMBEDDINGS__STORE)"
        )
    else:
        message += f"; none scored by this checkpoint ({_model_ids(scorer)})"
    message += f". Stored by model id: {_by_model(coverage)}"
    if embedded:
        message += ". Pass the checkpoint that scored them with --model"
    return message


def _model_ids(scorer: ClipScorer) -> str:
    text = f"model id {scorer.model_id}, loaded as {scorer.model_name}"
    if scorer.legacy_model_ids:
        text += "; also looked under " + ", ".join(repr(name) for name in scorer.legacy_model_ids)
    return text


def _by_model(coverage: list[ModelCoverage], limit: int = 5) -> str:
    shown = [f"{c.model_id}: {c.verdicts:,} ({c.with_embeddings:,} with embeddings)" for c in coverage[:limit]]
    if len(coverage) > limit:
        shown.append(f"{len(coverage) - limit} more")
    return "; ".join(shown)


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
    finally:
        engine.dispose()
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n", encoding="utf-8")
    return ExitCode.OK


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np

    from moderation.policy import load_policy
    from moderation.tuning import table, tune

    if args.labels is None and not args.from_reviews:
        raise UsageError("policy tune needs labelled examples: --labels FILE (CSV or JSONL), --from-reviews, or both")
    loaded = load_policy(args.policy)
    items = _read_labels(args.labels, loaded) if args.labels is not None else []  # before the model loads
    scorer = _LazyScorer(settings, args.model).get()
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
                f"({_model_ids(scorer)}); `moderation policy precision` shows what was reviewed"
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
        raise UsageError(str(exc)) from exc
    unknown = unknown_labels((item.categories for item in items), policy)
    if unknown:
        raise UsageError(f"labels file {path}: {describe_unknown(unknown, policy)}")
    return items


def _embed_labels(
    items: list[LabelledItem], scorer: ClipScorer, settings: Settings
) -> dict[int, tuple[LabelledItem, Any]]:
    """Position -> (item, float16 embedding) for every labelled item that could be embedded: content ids
    from their stored verdicts' embeddings (under this checkpoint's ids), image files through the model."""
    from moderation.offline import embed_files
    from moderation.storage import EmbeddingStore, create_engine_for

    by_content: dict[str, Any] = {}
    content_ids = [item.content_id for item in items if item.content_id is not None]
    if content_ids:
        engine = create_engine_for(settings.database_url)
        try:
            by_content = EmbeddingStore(engine).for_content_ids(scorer.stored_model_ids, content_ids)
        finally:
            engine.dispose()
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
    from moderation.storage import EmbeddingStore, create_engine_for

    content_ids = [item.content_id for item in items if item.content_id is not None]
    reason = f"no labelled item has an embedding under this checkpoint ({_model_ids(scorer)})"
    if not content_ids:
        return reason + "; none of the image files could be read"
    engine = create_engine_for(settings.database_url)
    try:
        coverage = EmbeddingStore(engine).coverage(content_ids=content_ids)
    finally:
        engine.dispose()
    if not coverage:
        return reason + f"; no scored verdict has any of the {len(content_ids)} labelled content ids"
    return reason + f"; scored verdicts of the labelled content ids, by model id: {_by_model(coverage)}"


def _reviewed(
    scorer: ClipScorer, settings: Settings, since: datetime | None, policy: LoadedPolicy
) -> tuple[list[Any], list[frozenset[str]]]:
    """Reviewers' decisions on flagged verdicts of this checkpoint as labelled embeddings."""
    from collections import Counter

    from moderation.storage import create_engine_for
    from moderation.storage.outcomes import OutcomeStore

    embeddings: list[Any] = []
    labels: list[frozenset[str]] = []
    engine = create_engine_for(settings.database_url)
    try:
        store = OutcomeStore(engine)
        for model_id in scorer.stored_model_ids:  # a verdict has one model id: the sets are disjoint
            rows, row_labels, _ = store.labelled_embeddings(model_id, since)
            embeddings += list(rows)
            labels += row_labels
    finally:
        engine.dispose()
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
