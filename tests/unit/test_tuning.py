"""Threshold tuning as pure logic: which threshold is suggested, how scores print, how label files are read
and which labels are refused. The end-to-end command runs in tests/integration/test_policy_commands.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from moderation.policy import parse_policy
from moderation.tuning import (
    LabelsError,
    choose_threshold,
    describe_unknown,
    format_score,
    load_labels,
    unknown_labels,
)
from tests.support.policies import colour_policy

# The shape seen on the test model: eleven positives crowd against 1, one negative sits at 0.7055 and
# the rest far below. At a 0.9 precision target, 0.7055 (precision 11/12, recall 1) also "reaches" it.
POSITIVES = [0.99995, 0.99993, 0.9999, 0.9998, 0.9997, 0.9995, 0.999, 0.998, 0.997, 0.996, 0.9951]
NEGATIVES = [0.7055, 0.31, 0.2, 0.12, 0.05, 0.01]


def shape() -> tuple[np.ndarray, np.ndarray]:
    scores = np.array(POSITIVES + NEGATIVES, dtype=np.float64)
    return scores, np.array([True] * len(POSITIVES) + [False] * len(NEGATIVES))


def test_a_precision_target_takes_the_most_recall_then_the_best_precision_inside_the_gap() -> None:
    scores, positive = shape()
    chosen = choose_threshold(scores, positive, target_precision=0.9)
    assert chosen is not None
    assert (chosen.precision, chosen.recall, chosen.flagged) == (1.0, 1.0, 11)
    # Between the lowest positive (0.9951) and the false positive below it (0.7055), on neither score.
    assert 0.7055 < chosen.threshold < 0.9951
    assert chosen.threshold not in scores
    assert abs(chosen.threshold - (0.9951 + 0.7055) / 2) < 0.01


def test_a_recall_target_takes_the_best_precision_and_never_a_false_positives_score() -> None:
    # The highest threshold reaching recall 0.5 is 0.8 (precision 0.75, recall 0.6); going down to 0.7
    # takes in one more positive at no cost (precision 0.8, recall 0.8).
    scores = np.array([0.95, 0.9, 0.9, 0.8, 0.7, 0.4, 0.3, 0.2])
    positive = np.array([True, True, False, True, True, False, True, False])
    chosen = choose_threshold(scores, positive, target_recall=0.5)
    assert chosen is not None
    assert (chosen.recall, chosen.flagged) == (0.8, 5) and chosen.precision == pytest.approx(0.8)
    assert 0.4 < chosen.threshold < 0.7


def test_a_target_no_threshold_reaches_gives_none_and_the_lowest_score_is_kept_when_nothing_is_below() -> None:
    scores = np.array([0.9, 0.8, 0.7])
    positive = np.array([False, True, True])
    assert choose_threshold(scores, positive, target_precision=1.0) is None  # the top score is a negative
    everything = choose_threshold(scores, np.array([True, True, True]), target_recall=1.0)
    assert everything is not None and everything.threshold == 0.7 and everything.recall == 1.0


def test_the_suggested_threshold_is_a_short_decimal_that_still_separates_close_scores() -> None:
    scores = np.array([0.999996, 0.999995, 0.999990])
    positive = np.array([True, True, False])
    chosen = choose_threshold(scores, positive, target_precision=1.0)
    assert chosen is not None and 0.999990 < chosen.threshold <= 0.999995
    assert len(repr(chosen.threshold)) <= len("0.9999925")


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (0.5, "0.5000"),
        (1.0, "1.0000"),
        (0.0, "0.0000"),
        (0.99997, "0.99997"),
        (0.9999996, "0.9999996"),
        (0.00003, "0.00003"),
        (-0.00002, "-0.00002"),
        (1 - 3e-14, "1 - 3.0e-14"),
        (2e-15, "2.0e-15"),
    ],
)
def test_scores_that_would_round_to_one_or_zero_print_distinguishably(value: float, printed: str) -> None:
    assert format_score(value) == printed


def test_a_missing_labels_file_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match=r"labels file .*nope\.csv: cannot be read"):
        load_labels(tmp_path / "nope.csv")


def test_a_labels_file_without_id_or_category_columns_names_the_header(tmp_path: Path) -> None:
    (tmp_path / "ids.csv").write_text("id,label\nc1,red\n")
    with pytest.raises(LabelsError, match=r"ids\.csv: no 'content_id' or 'image' column \(header: id, label\)"):
        load_labels(tmp_path / "ids.csv")
    (tmp_path / "nocat.csv").write_text("content_id,label\nc1,red\n")
    with pytest.raises(LabelsError, match=r"no 'category' or 'categories' column"):
        load_labels(tmp_path / "nocat.csv")
    (tmp_path / "bad.jsonl").write_text('{"content_id": "c1", "category": "red"}\n{oops\n')
    with pytest.raises(LabelsError, match=r"bad\.jsonl, line 2: not JSON"):
        load_labels(tmp_path / "bad.jsonl")
    (tmp_path / "empty.csv").write_text("content_id,category\n")
    with pytest.raises(LabelsError, match="holds no labelled items"):
        load_labels(tmp_path / "empty.csv")


def test_labels_are_case_folded_and_unknown_ones_are_counted_with_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text(
        "content_id,category\nc1,RED\nc2,porn\nc3,porn\nc4,yelow\nc5,Safe\nc6,red;Porn\n"
    )
    items = load_labels(tmp_path / "labels.csv")
    assert [sorted(i.categories) for i in items] == [["red"], ["porn"], ["porn"], ["yelow"], [], ["porn", "red"]]
    policy = parse_policy(colour_policy("v1"))
    unknown = unknown_labels([i.categories for i in items], policy)
    assert unknown == Counter({"porn": 3, "yelow": 1})
    message = describe_unknown(unknown, policy)
    assert "'porn' (3)" in message and "'yelow' (1), did you mean 'yellow'?" in message
    assert "(the policy's categories: safe, red, yellow;" in message
