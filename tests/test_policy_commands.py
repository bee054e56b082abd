"""`moderation policy check | backtest | tune` and `moderation embeddings prune`, run as real processes
against a real database holding verdicts and embeddings the real pipeline code wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moderation.moderator import Moderator
from moderation.policy import parse_policy
from moderation.settings import ImageSettings
from moderation.storage import EmbeddingStore, VerdictStore, create_engine_for, upgrade
from moderation.testmodel import make_colour_image
from tests.test_cli import moderation
from tests.test_policy_lifecycle import colour_policy, event, png

POLICY = Path(__file__).resolve().parent.parent / "policies" / "test-model.yaml"


@pytest.fixture
def traffic(scorer: object, sqlite_url: str) -> str:
    """A database with 16 verdicts (4 red, 4 yellow, 8 safe) and their embeddings, under `colour_policy()`."""
    upgrade(sqlite_url)
    store = VerdictStore(create_engine_for(sqlite_url))
    policy = parse_policy(colour_policy("live-1"))
    moderator = Moderator(scorer, policy, ImageSettings(), loader_threads=2)  # type: ignore[arg-type]
    events = [event(f"{c}-{i}", png(c, i)) for c in ("red", "yellow", "blue", "green") for i in range(4)]
    store.save_batch(moderator.moderate(events))
    moderator.close()
    store.engine.dispose()
    return sqlite_url


def blue_instead_of_yellow(version: str) -> str:
    """A candidate for `colour_policy()` traffic: yellow becomes a safe category, blue is flagged instead."""
    return (
        colour_policy(version)
        .replace(
            '  yellow: {prompts: ["a yellow picture"], threshold: 0.5, action: block}\n',
            '  yellow: {prompts: ["a yellow picture"]}\n',
        )
        .replace('["a blue picture", ', "[")
        .replace(
            "categories:\n", 'categories:\n  blue: {prompts: ["a blue picture"], threshold: 0.5, action: review}\n'
        )
    )


def env_for(url: str, model: Path) -> dict[str, str]:
    return {
        "MODERATION_DATABASE__URL": url,
        "MODERATION_MODEL__NAME_OR_PATH": str(model),
        "MODERATION_MODEL__DEVICE": "cpu",
    }


def test_policy_check_runs_golden_examples(test_model_dir: Path, tmp_path: Path) -> None:
    ok = moderation("policy", "check", "--model", str(test_model_dir), str(POLICY))
    assert ok.returncode == 0, ok.stderr
    assert "golden examples: 5/5 pass" in ok.stdout

    regressed = tmp_path / "regressed.yaml"
    regressed.write_text(
        POLICY.read_text()
        .replace('- "a yellow picture"', '- "a green picture"')
        .replace("examples/test-model/", f"{POLICY.parent}/examples/test-model/")
    )
    failed = moderation("policy", "check", "--model", str(test_model_dir), str(regressed))
    assert failed.returncode == 1
    assert "golden examples: 3/5 pass" in failed.stdout or "golden examples: 4/5 pass" in failed.stdout
    assert "FAIL" in failed.stderr and "yellow.png: expected yellow" in failed.stderr


def test_backtest_reports_changes_per_category(traffic: str, test_model_dir: Path, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(blue_instead_of_yellow("candidate-1"))
    report_path = tmp_path / "report.json"
    result = moderation(
        "policy", "backtest", str(candidate), "--since", "1d", "--json", str(report_path),
        env=env_for(traffic, test_model_dir),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["items"] == 16
    assert report["categories"]["yellow"]["no_longer_flagged"] == 4
    assert report["categories"]["blue"]["newly_flagged"] == 4
    assert report["categories"]["red"]["no_longer_flagged"] == 0
    assert all(c.startswith("content-yellow-") for c in report["categories"]["yellow"]["examples_no_longer_flagged"])
    assert "policy candidate-1" in result.stdout and "items/s" in result.stdout


def test_tune_suggests_thresholds_from_labelled_content_ids_and_images(
    traffic: str, test_model_dir: Path, tmp_path: Path
) -> None:
    make_colour_image("red", (64, 64), seed=99).save(tmp_path / "extra-red.png")
    labels = tmp_path / "labels.csv"
    rows = [
        f"content-{c}-{i},,{c if c in ('red', 'yellow') else 'safe'}"
        for c in ("red", "yellow", "blue", "green")
        for i in range(4)
    ]
    rows += [",extra-red.png,red", ",missing.png,red"]
    labels.write_text("content_id,image,category\n" + "\n".join(rows) + "\n")
    out = tmp_path / "tune.json"
    result = moderation(
        "policy", "tune", str(POLICY), "--labels", str(labels), "--target-precision", "0.9", "--json", str(out),
        env=env_for(traffic, test_model_dir),
    )
    assert result.returncode == 0, result.stderr
    tuned = {c["category"]: c for c in json.loads(out.read_text())["categories"]}
    assert set(tuned) == {"red", "yellow"}
    # 4 stored red verdicts and one image file are positives; missing.png is skipped.
    assert tuned["red"]["positives"] == 5 and tuned["red"]["negatives"] == 12
    assert tuned["red"]["suggested"]["precision"] >= 0.9
    assert "missing.png" in result.stderr
    assert "suggested threshold" in result.stdout


def test_embeddings_prune_keeps_recent_ones(traffic: str) -> None:
    result = moderation("embeddings", "prune", env={"MODERATION_DATABASE__URL": traffic})
    assert result.returncode == 0, result.stderr
    assert "deleted 0 embeddings" in result.stdout
    engine = create_engine_for(traffic)
    try:
        assert EmbeddingStore(engine).count() == 16
    finally:
        engine.dispose()


def test_shadow_report_compares_shadow_verdicts_with_the_ones_acted_on(scorer: object, sqlite_url: str) -> None:
    from moderation.policy_book import PolicyBook

    upgrade(sqlite_url)
    store = VerdictStore(create_engine_for(sqlite_url))
    live = parse_policy(colour_policy("live-1"))
    candidate = parse_policy(blue_instead_of_yellow("candidate-2"))
    book = PolicyBook(live, shadows=(candidate,))
    moderator = Moderator(scorer, book, ImageSettings(), loader_threads=2)  # type: ignore[arg-type]
    events = [event(f"{c}-{i}", png(c, i)) for c in ("red", "yellow", "blue", "green") for i in range(3)]
    store.save_batch(moderator.moderate(events))
    moderator.close()
    store.engine.dispose()

    out = Path(sqlite_url.removeprefix("sqlite:///")).parent / "shadow.json"
    database = {"MODERATION_DATABASE__URL": sqlite_url}
    result = moderation("policy", "shadow-report", "--json", str(out), env=database)
    assert result.returncode == 0, result.stderr
    [report] = json.loads(out.read_text())
    assert report["policy_version"] == "candidate-2" and report["items"] == 12
    assert report["categories"]["yellow"]["no_longer_flagged"] == 3
    assert report["categories"]["blue"]["newly_flagged"] == 3
    assert report["categories"]["red"]["newly_flagged"] == report["categories"]["red"]["no_longer_flagged"] == 0
    assert "events seen in shadow" in result.stdout

    missing = moderation("policy", "shadow-report", "--policy-version", "nope", env=database)
    assert missing.returncode == 1 and "candidate-2 (12 rows)" in missing.stderr


def test_tune_from_reviewer_decisions(traffic: str, test_model_dir: Path, tmp_path: Path) -> None:
    from datetime import datetime, timezone

    from moderation.outcomes import ReviewOutcome
    from moderation.storage.outcomes import OutcomeStore

    # Reviewers confirm three red flags and overturn one; they confirm every yellow block.
    decided = datetime.now(timezone.utc).isoformat()
    outcomes = [
        ReviewOutcome(schema_version=1, event_id=f"red-{i}", outcome="confirmed" if i < 3 else "overturned",
                      decided_at=decided)
        for i in range(4)
    ] + [ReviewOutcome(schema_version=1, event_id=f"yellow-{i}", outcome="confirmed", decided_at=decided)
         for i in range(4)]
    engine = create_engine_for(traffic)
    try:
        assert OutcomeStore(engine).save_many(outcomes) == 8
    finally:
        engine.dispose()
    out = tmp_path / "tune.json"
    result = moderation(
        "policy", "tune", str(POLICY), "--from-reviews", "--target-recall", "1.0", "--json", str(out),
        env=env_for(traffic, test_model_dir),
    )
    assert result.returncode == 0, result.stderr
    assert "8 labelled items" in result.stdout
    tuned = {c["category"]: c for c in json.loads(out.read_text())["categories"]}
    assert (tuned["red"]["positives"], tuned["red"]["negatives"]) == (3, 5)
    assert (tuned["yellow"]["positives"], tuned["yellow"]["negatives"]) == (4, 4)
    assert tuned["red"]["current"]["precision"] == 0.75  # 3 of the 4 red flags were right
