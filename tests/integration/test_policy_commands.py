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
from tests.support.cli import moderation
from tests.support.events import event
from tests.support.images import png
from tests.support.paths import POLICY
from tests.support.policies import colour_policy


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

    from moderation.review_outcome import ReviewOutcome
    from moderation.storage.review_decisions import OutcomeStore

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
        "policy", "tune", str(POLICY), "--from-reviews", "--since", "1d", "--target-recall", "1.0", "--json", str(out),
        env=env_for(traffic, test_model_dir),
    )
    assert result.returncode == 0, result.stderr
    assert "8 labelled items" in result.stdout
    tuned = {c["category"]: c for c in json.loads(out.read_text())["categories"]}
    assert (tuned["red"]["positives"], tuned["red"]["negatives"]) == (3, 5)
    assert (tuned["yellow"]["positives"], tuned["yellow"]["negatives"]) == (4, 4)
    assert tuned["red"]["current"]["precision"] == 0.75  # 3 of the 4 red flags were right


# -- in-process runs of the command handlers: the exit contract, refusals, model identity -------------


def run(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Parse `argv` as `moderation` does and run its handler here; CommandError propagates to the test."""
    from consumers.cli import build_parser
    from consumers.settings import Settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(argv)
    return args.handler(args, Settings())


def test_policy_commands_return_the_shared_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    from consumers.errors import ExitCode

    good = tmp_path / "good.yaml"
    good.write_text(colour_policy("v1"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(colour_policy("v1", red=1.5))
    env = {"MODERATION_DATABASE__URL": sqlite_url}
    assert run(["policy", "check", "--skip-examples", str(good)], env, monkeypatch) is ExitCode.OK
    assert run(["policy", "check", "--skip-examples", str(bad)], env, monkeypatch) is ExitCode.FAILED
    upgrade(sqlite_url)
    assert run(["policy", "shadow-report"], env, monkeypatch) is ExitCode.OK  # nothing recorded yet


@pytest.mark.parametrize(
    ("labels_file", "content", "problem"),
    [
        ("nope.csv", None, r"labels file .*nope\.csv: cannot be read"),
        ("ids.csv", "id,category\nc1,red\n", r"ids\.csv: no 'content_id' or 'image' column \(header: id, category\)"),
        (
            "taxonomy.csv",
            "content_id,category\nc1,porn\nc2,porn\nc3,RED\nc4,reds\n",
            r"'porn' \(2\); 'reds' \(1\), did you mean 'red'\? \(the policy's categories: safe, red, yellow;",
        ),
    ],
)
def test_tune_refuses_unusable_labels_in_one_line_before_loading_the_model(
    labels_file: str, content: str | None, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumers.errors import ExitCode, UsageError

    labels = tmp_path / labels_file
    if content is not None:
        labels.write_text(content)
    env = {"MODERATION_MODEL__NAME_OR_PATH": str(tmp_path / "no-model-here")}  # never needed
    with pytest.raises(UsageError, match=problem) as refused:
        run(["policy", "tune", str(POLICY), "--labels", str(labels), "--target-precision", "0.9"], env, monkeypatch)
    assert refused.value.exit_code is ExitCode.USAGE and "\n" not in str(refused.value)


def test_tune_needs_labels_and_targets_that_are_fractions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from consumers.errors import UsageError

    env = {"MODERATION_MODEL__NAME_OR_PATH": str(tmp_path / "no-model-here")}
    with pytest.raises(UsageError, match="needs labelled examples: --labels FILE"):
        run(["policy", "tune", str(POLICY), "--target-precision", "0.9"], env, monkeypatch)
    for flag, value in (("--target-precision", "1.5"), ("--target-recall", "0"), ("--target-precision", "x")):
        with pytest.raises(SystemExit) as usage:
            run(["policy", "tune", str(POLICY), "--from-reviews", flag, value], env, monkeypatch)
        assert usage.value.code == 2
        assert f"argument {flag}" in capsys.readouterr().err


def test_tune_with_no_matching_labels_says_how_many_were_read_and_where_the_verdicts_are(
    traffic: str, test_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from consumers.errors import CommandError, ExitCode

    labels = tmp_path / "labels.csv"
    labels.write_text("content_id,category\ncontent-red-0,RED\ncontent-red-1,red\nunknown-7,safe\n")
    engine = create_engine_for(traffic)
    try:  # the verdicts of another checkpoint
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE verdicts SET model_id = 'other/model'")
            conn.exec_driver_sql("UPDATE embeddings SET model_id = 'other/model'")
    finally:
        engine.dispose()
    argv = ["policy", "tune", str(POLICY), "--labels", str(labels), "--target-precision", "0.9"]
    with pytest.raises(CommandError) as failed:
        run(argv, env_for(traffic, test_model_dir), monkeypatch)
    message = str(failed.value)
    assert failed.value.exit_code is ExitCode.FAILED
    assert "nothing to tune on" in message and "other/model: 2 (2 with embeddings)" in message
    assert "sha256:" in message  # the model id this checkpoint has
    summary = capsys.readouterr().err
    assert "labels: 3 read (3 content ids, 0 image files), 0 matched: red 0, yellow 0, negatives 0" in summary
    assert "3 without an embedding, e.g. content-red-0" in summary


def test_backtest_through_a_symlink_finds_the_same_checkpoints_embeddings(
    traffic: str, test_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from consumers.errors import ExitCode

    link = tmp_path / "current-model"
    link.symlink_to(test_model_dir)
    out = tmp_path / "report.json"
    argv = ["policy", "backtest", str(POLICY), "--model", str(link), "--json", str(out)]
    assert run(argv, env_for(traffic, test_model_dir), monkeypatch) is ExitCode.OK
    assert json.loads(out.read_text())["items"] == 16


def test_backtest_reads_rows_stored_under_the_legacy_path_id(
    traffic: str, test_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import os

    engine = create_engine_for(traffic)
    legacy = os.path.realpath(test_model_dir)  # how rows were keyed before ids were content hashes
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE verdicts SET model_id = ?", (legacy,))
            conn.exec_driver_sql("UPDATE embeddings SET model_id = ?", (legacy,))
    finally:
        engine.dispose()
    link = tmp_path / "current-model"
    link.symlink_to(test_model_dir)
    out = tmp_path / "report.json"
    argv = ["policy", "backtest", str(POLICY), "--model", str(link), "--json", str(out)]
    run(argv, env_for(traffic, test_model_dir), monkeypatch)
    assert json.loads(out.read_text())["items"] == 16
    assert f"16 of these rows were stored under the legacy model id {legacy!r}" in capsys.readouterr().err


def test_a_backtest_of_nothing_fails_and_says_why(
    traffic: str, test_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumers.errors import CommandError, ExitCode

    env = env_for(traffic, test_model_dir)
    with pytest.raises(CommandError, match="nothing to backtest: no scored verdicts since 2999-01-01T00:00:00"):
        run(["policy", "backtest", str(POLICY), "--since", "2999-01-01"], env, monkeypatch)
    engine = create_engine_for(traffic)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE verdicts SET model_id = 'other/model'")
            conn.exec_driver_sql("UPDATE embeddings SET model_id = 'other/model'")
    finally:
        engine.dispose()
    with pytest.raises(CommandError) as failed:
        run(["policy", "backtest", str(POLICY), "--since", "1d"], env, monkeypatch)
    message = str(failed.value)
    assert failed.value.exit_code is ExitCode.FAILED
    assert "16 scored verdicts since" in message and "16 with a stored embedding" in message
    assert "other/model: 16 (16 with embeddings)" in message and "Pass the checkpoint that scored them" in message
    assert "model id sha256:" in message and f"loaded as {test_model_dir}" in message


def test_check_warns_when_a_version_was_recorded_with_other_content(
    traffic: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from consumers.errors import ExitCode

    edited = tmp_path / "edited.yaml"
    edited.write_text(colour_policy("live-1", red=0.4))  # the traffic was decided under live-1 at 0.5
    same = tmp_path / "same.yaml"
    same.write_text(colour_policy("live-1"))
    env = {"MODERATION_DATABASE__URL": traffic}
    assert run(["policy", "check", "--skip-examples", str(same)], env, monkeypatch) is ExitCode.OK
    assert "WARNING" not in capsys.readouterr().err
    assert run(["policy", "check", "--skip-examples", str(edited)], env, monkeypatch) is ExitCode.OK
    warning = capsys.readouterr().err
    assert f"WARNING: {edited}: version 'live-1' has content" in warning
    assert "(16 verdicts)" in warning and "Bump `version`" in warning

    run(["policy", "check", "--skip-examples", str(same), str(edited)], env, monkeypatch)
    assert "version 'live-1' has different content in" in capsys.readouterr().err
