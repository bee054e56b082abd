"""`moderation policy train`: trained heads for a policy's unsafe categories, from reviewers' decisions, a
labels file or labelled image folders, with a report against the zero-shot policy, the head files and a
policy draft written for review (moderation/head_training.py does the work; nothing here is live until
the draft goes through check, backtest and shadow like any policy edit)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.commands.arguments import since
from consumers.commands.checkpoint import LazyScorer
from consumers.commands.labels import gather_labelled, labels_from_folders, read_labels
from consumers.commands.tune import fraction
from consumers.errors import CommandError, ExitCode
from consumers.settings import Settings

if TYPE_CHECKING:
    from moderation.head_training import TrainedCategory
    from moderation.policy import LoadedPolicy

HEADS_DIR = "heads"


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.head_training import table, train_category
    from moderation.heads import HeadError
    from moderation.policy import load_policy

    loaded = load_policy(args.policy)
    categories = _categories(args.category, loaded)
    items = read_labels(args.labels, loaded) if args.labels is not None else []  # before the model loads
    if args.images is not None:
        items += labels_from_folders(args.images, loaded)
    if not items and not args.from_reviews:
        raise CommandError.user(
            "policy train needs labelled examples: --from-reviews, --labels FILE (CSV or JSONL), "
            "--images DIRECTORY (one folder per category), or several"
        )
    scorer = LazyScorer(settings, args.model).get()
    embeddings, labels = gather_labelled(items, args.from_reviews, args.since, scorer, settings, loaded, "train")
    text = scorer.policy_text(loaded)
    if embeddings.shape[1] != text.category_embeddings.shape[1]:
        raise CommandError(f"the labelled embeddings are {embeddings.shape[1]} wide but model {scorer.model_name} "
                           f"makes {text.category_embeddings.shape[1]}: labels from another model's embeddings")
    print(f"{len(labels)} labelled items; policy {loaded.version} ({loaded.policy.scoring} scoring); "
          f"model {scorer.model_name}", file=sys.stderr)
    trained: list[TrainedCategory] = []
    skipped: list[str] = []
    for category in categories:
        started = time.perf_counter()
        print(f"training {category} ...", file=sys.stderr)
        try:
            result = train_category(
                loaded, text, embeddings, labels, category, model_id=scorer.model_id,
                target_precision=args.target_precision, target_recall=args.target_recall,
            )
        except HeadError as exc:
            if args.category:  # asked for by name: its failure is the command's
                raise CommandError(str(exc)) from exc
            skipped.append(str(exc))
            continue
        print(f"  done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        trained.append(result)
        print(table(result.report))
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    if not trained:
        raise CommandError("no head trained: " + "; ".join(skipped))
    if args.dry_run:
        print("dry run: no head file or draft written")
        return ExitCode.OK
    draft_path = args.out or args.policy.with_name(f"{args.policy.stem}.trained.yaml")
    written = _write_heads(trained, draft_path.parent / HEADS_DIR)
    version = args.version or _draft_version(loaded.version)
    _write_draft(loaded, trained, written, draft_path, version)
    for result in trained:
        print(f"head for {result.head.category}: {written[result.head.category][0]}")
    print(f"policy draft: {draft_path} (version {version}); next: moderation policy check {draft_path}, "
          f"then policy backtest, then shadow it")
    if args.json:
        payload = {"policy": loaded.version, "draft": str(draft_path), "draft_version": version,
                   "categories": [r.report.as_dict() for r in trained]}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return ExitCode.OK


def _categories(asked: list[str] | None, policy: LoadedPolicy) -> list[str]:
    unsafe = list(policy.policy.unsafe_categories)
    if not asked:
        return unsafe
    wrong = [name for name in asked if name not in unsafe]
    if wrong:
        raise CommandError.user(
            f"--category {', '.join(wrong)}: not an unsafe category of policy {policy.version} "
            f"(heads score unsafe categories: {', '.join(unsafe)})"
        )
    return list(dict.fromkeys(asked))


def _write_heads(trained: list[TrainedCategory], directory: Path) -> dict[str, tuple[Path, str]]:
    """Each head and its report, named by category and the head's own hash (a file is never rewritten
    under a name a policy may already pin)."""
    written = {}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for result in trained:
            scratch = directory / f".{result.head.category}.partial.safetensors"
            report = {**result.report.as_dict(), "model_id": result.head.model_id}
            digest = result.head.save(scratch, report=report)  # inside the file: the pin covers it
            path = directory / f"{result.head.category}-{digest[:12]}.safetensors"
            scratch.replace(path)
            beside = {**report, "sha256": digest}  # the same report for people, beside the file
            path.with_suffix(".report.json").write_text(json.dumps(beside, indent=2) + "\n", encoding="utf-8")
            written[result.head.category] = (path, digest)
    except OSError as exc:
        raise CommandError(f"cannot write heads into {directory}: {exc.strerror or exc}") from exc
    return written


def _draft_version(version: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M")
    return f"{version[: 64 - len(stamp) - 9]}-trained-{stamp}"


def _write_draft(
    loaded: LoadedPolicy, trained: list[TrainedCategory], written: dict[str, tuple[Path, str]], draft: Path,
    version: str,
) -> None:
    """The policy with each trained category scored by its head at the report's threshold, re-validated
    (heads read back and checked against their pins) before it is written."""
    import yaml

    from moderation.exceptions import PolicyError
    from moderation.policy import parse_policy

    raw: dict[str, Any] = yaml.safe_load(loaded.text)
    raw["version"] = version
    source_dir = Path(loaded.path).parent
    for example in raw.get("examples") or []:  # golden examples still find their images from the draft
        example["image"] = os.path.relpath(source_dir / example["image"], draft.parent)
    for result in trained:
        category = raw["categories"][result.head.category]
        path, digest = written[result.head.category]  # the sha256 `Head.save` computed of what it wrote
        category["head"] = {"file": str(path.relative_to(draft.parent)), "sha256": digest}
        category["threshold"] = round(result.report.threshold, 6)
        margin = category.get("uncertain_margin")
        if margin is not None and not (0 < category["threshold"] - margin and category["threshold"] + margin < 1):
            del category["uncertain_margin"]  # the band was in zero-shot units; it would leave [0, 1] here
    header = (
        f"# Draft written by `moderation policy train` from {loaded.path} ({loaded.version}) on "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.\n"
        "# Categories with a `head` are scored by a trained head (a calibrated probability); read the\n"
        "# training report, then `moderation policy check`, `policy backtest` and a shadow run before use.\n"
    )
    text = header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=110)
    try:
        parse_policy(text, str(draft), head_dir=draft.parent)
    except PolicyError as exc:  # a bug here, not the user's: say what was wrong rather than write it
        raise CommandError(f"the draft policy does not validate: {exc}") from exc
    try:
        draft.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write the draft policy {draft}: {exc.strerror or exc}") from exc


def register(policy_commands: Any) -> None:
    """Add train to the `moderation policy` subcommands."""
    parser = policy_commands.add_parser(
        "train", help="train heads for unsafe categories from labels; write a report, the heads and a policy draft"
    )
    parser.add_argument("policy", type=Path, help="the policy whose categories to train heads for")
    parser.add_argument("--category", action="append", default=None,
                        help="an unsafe category to train (repeatable; default: each unsafe one with enough labels)")
    parser.add_argument("--from-reviews", action="store_true", help="use reviewers' decisions as labels")
    parser.add_argument("--since", type=since, default=None, help="with --from-reviews: only verdicts since then")
    parser.add_argument("--labels", type=Path, default=None,
                        help="CSV or JSONL: content_id or image, and category ('safe' or empty for negatives)")
    parser.add_argument("--images", type=Path, default=None,
                        help="a directory with one folder of images per category ('safe' or 'none' for negatives)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target-precision", type=fraction, default=None,
                        help="set each head's threshold for this precision (default: 0.5, a probability)")
    target.add_argument("--target-recall", type=fraction, default=None,
                        help="set each head's threshold for this recall")
    parser.add_argument("--out", type=Path, default=None,
                        help="the draft policy to write (default: POLICY's name with .trained.yaml); heads go "
                             "into heads/ beside it")
    parser.add_argument("--version", default=None, help="the draft's version (default: the policy's, -trained-<time>)")
    parser.add_argument("--dry-run", action="store_true", help="report only: write no head and no draft")
    parser.add_argument("--model", default=None, help="checkpoint (default: the configured one)")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")
    parser.set_defaults(handler=cmd_train)
