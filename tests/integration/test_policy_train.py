"""`moderation policy train` as a real process: heads from labelled image folders and from reviewers'
decisions stored in a real database, the report, the head files and the draft, then the usual lifecycle
(check with golden examples, backtest over stored embeddings) on the draft; and its refusals."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from moderation.moderator import Moderator
from moderation.policy import load_policy, parse_policy
from moderation.review_outcome import ReviewOutcome
from moderation.settings import ImageSettings
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.review_decisions import OutcomeStore
from tests.support.cli import moderation
from tests.support.events import event
from tests.support.heads import warm_policy, write_labelled_folders
from tests.support.images import png
from tests.support.paths import POLICY
from tests.support.policies import colour_policy


def env_for(model: Path, url: str | None = None) -> dict[str, str]:
    env = {"MODERATION_MODEL__NAME_OR_PATH": str(model), "MODERATION_MODEL__DEVICE": "cpu"}
    if url is not None:
        env["MODERATION_DATABASE__URL"] = url
    return env


def test_train_from_image_folders_writes_a_report_a_pinned_head_and_a_draft_that_checks(
    test_model_dir: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "warm.yaml"
    policy.write_text(warm_policy())
    folders = write_labelled_folders(tmp_path / "labelled", per_colour=10, first_seed=300)
    report_path = tmp_path / "report.json"
    result = moderation("policy", "train", str(policy), "--images", str(folders), "--json", str(report_path),
                        env=env_for(test_model_dir))
    assert result.returncode == 0, result.stderr
    assert "zero-shot (prompts)" in result.stdout and "trained head" in result.stdout
    assert "labels: 60 read (0 content ids, 60 image files), 60 matched: warm 20, negatives 40" in result.stderr
    report = json.loads(report_path.read_text())
    (warm,) = report["categories"]
    assert (warm["positives"], warm["negatives"]) == (20, 40)
    assert warm["zero_shot"]["f1"] <= 0.7 and warm["head"]["f1"] >= warm["zero_shot"]["f1"] + 0.2
    assert [point["labels"] for point in warm["curve"]][:1] == [25]

    draft = tmp_path / "warm.trained.yaml"
    raw = yaml.safe_load(draft.read_text())
    assert raw["version"].startswith("warm-1-trained-")
    head_file = tmp_path / raw["categories"]["warm"]["head"]["file"]
    assert head_file.parent == tmp_path / "heads" and head_file.is_file()
    assert json.loads(head_file.with_suffix(".report.json").read_text())["sha256"] == raw["categories"]["warm"][
        "head"]["sha256"]
    loaded = load_policy(draft)
    assert loaded.heads["warm"].model_id.startswith("sha256:")
    assert loaded.sha256 != parse_policy(warm_policy()).sha256
    checked = moderation("policy", "check", "--model", str(test_model_dir), str(draft))
    assert checked.returncode == 0, checked.stderr
    assert "scored by trained head heads/warm-" in checked.stdout


@pytest.fixture
def reviewed_traffic(scorer: object, sqlite_url: str) -> str:
    """32 verdicts under `colour_policy()` (8 of each of red, yellow, blue, green) with their embeddings;
    reviewers confirmed every flag (the 8 red and 8 yellow ones)."""
    upgrade(sqlite_url)
    store = VerdictStore(create_engine_for(sqlite_url))
    moderator = Moderator(scorer, parse_policy(colour_policy("live-1")), ImageSettings(), loader_threads=2)  # type: ignore[arg-type]
    events = [event(f"{c}-{i}", png(c, i)) for c in ("red", "yellow", "blue", "green") for i in range(8)]
    store.save_batch(moderator.moderate(events))
    moderator.close()
    decided = datetime.now(timezone.utc).isoformat()
    outcomes = [ReviewOutcome(schema_version=1, event_id=f"{c}-{i}", outcome="confirmed", decided_at=decided)
                for c in ("red", "yellow") for i in range(8)]
    assert OutcomeStore(store.engine).save_many(outcomes) == 16
    store.engine.dispose()
    return sqlite_url


def test_train_from_reviewers_decisions_then_backtest_the_draft_over_stored_embeddings(
    reviewed_traffic: str, test_model_dir: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "colours.yaml"
    policy.write_text(colour_policy("live-1"))
    result = moderation("policy", "train", str(policy), "--from-reviews", "--category", "red",
                        "--target-precision", "0.9", env=env_for(test_model_dir, reviewed_traffic))
    assert result.returncode == 0, result.stderr
    assert "reviewers' decisions: 16 labelled items" in result.stderr
    assert "red: 8 labels in the category, 8 not" in result.stdout
    draft = tmp_path / "colours.trained.yaml"
    assert set(load_policy(draft).heads) == {"red"}
    report_path = tmp_path / "backtest.json"
    backtest = moderation("policy", "backtest", str(draft), "--since", "1d", "--json", str(report_path),
                          env=env_for(test_model_dir, reviewed_traffic))
    assert backtest.returncode == 0, backtest.stderr
    report = json.loads(report_path.read_text())
    assert report["items"] == 32
    # The head learned red from confirmed red flags and not-red from the yellow ones: the red flags stay.
    assert report["categories"]["red"]["flagged_after"] == 8
    assert report["categories"]["red"]["no_longer_flagged"] == 0


def test_train_refuses_what_it_cannot_train_in_one_line(
    reviewed_traffic: str, test_model_dir: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "warm.yaml"
    policy.write_text(warm_policy())
    env = env_for(test_model_dir, reviewed_traffic)
    cases = [
        (["--from-reviews"], 1, "reviewers' decisions name categories policy warm-1 does not have"),
        (["--images", str(tmp_path / "nowhere")], 2, "not a directory"),
        (["--from-reviews", "--category", "safe"], 2, "not an unsafe category of policy warm-1"),
        ([], 2, "needs labelled examples"),
    ]
    bad_folders = tmp_path / "bad"
    (bad_folders / "hot").mkdir(parents=True)
    cases.append((["--images", str(bad_folders)], 2, "folders that name no category of policy warm-1: hot"))
    few = write_labelled_folders(tmp_path / "few", per_colour=1, first_seed=1)  # 2 warm pictures
    cases.append((["--images", str(few)], 1, "warm: 2 labels in the category and 4 not; at least 5 of each"))
    for extra, code, message in cases:
        result = moderation("policy", "train", str(policy), *extra, env=env)
        assert result.returncode == code, (extra, result.stderr)
        assert message in result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "heads").exists()  # nothing written by a refused run


def test_a_trained_draft_keeps_its_golden_examples_working(test_model_dir: Path, tmp_path: Path) -> None:
    folders = write_labelled_folders(tmp_path / "labelled", per_colour=6, first_seed=700)
    (folders / "red").mkdir()
    (folders / "warm").rename(folders / "yellow")  # then the red pictures move to their own folder
    for path in (folders / "yellow").glob("red-*"):
        path.rename(folders / "red" / path.name)
    out = tmp_path / "drafts" / "colours.yaml"
    result = moderation("policy", "train", str(POLICY), "--images", str(folders), "--category", "red",
                        "--out", str(out), "--version", "colours-2", env=env_for(test_model_dir))
    assert result.returncode == 0, result.stderr
    checked = moderation("policy", "check", "--model", str(test_model_dir), str(out))
    assert checked.returncode == 0, checked.stderr + checked.stdout
    assert "golden examples: 5/5 pass" in checked.stdout
    assert load_policy(out).version == "colours-2"
