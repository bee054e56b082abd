"""A short run of bench/chaos.py: real worker processes SIGKILLed at random moments, then every count checked.

The full run (5,000 events, 30 kills) is `bench/chaos.py`; this one keeps CI near a minute per case.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.kafka

CHAOS = REPO / "bench" / "chaos.py"


def load_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_chaos", CHAOS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the classes
    spec.loader.exec_module(module)
    return module


chaos = load_chaos()


def run(config: object) -> object:
    outcome = chaos.run_chaos(config, log=lambda message: print(message, file=sys.stderr))
    print(chaos.render(outcome))
    return outcome


def test_stream_mix_has_every_kind_and_known_outcomes() -> None:
    plan = chaos.plan_stream(400, seed=3, tag="t")
    kinds = {p.kind for p in plan}
    assert kinds == set(chaos.KINDS)
    assert len({p.event_id for p in plan}) == 400
    assert chaos.slices(10, 3) == [(0, 3), (3, 7), (7, 10)]


@pytest.mark.slow
def test_one_worker_sigkilled_six_times_loses_and_doubles_nothing(
    sqlite_url: str, tmp_path: Path, test_model_dir: Path
) -> None:
    config = chaos.Config(events=500, kills=6, members=1, database=sqlite_url, seed=11, workdir=tmp_path,
                          drain_timeout_s=180, quiet=True)
    outcome = run(config)
    failed = {name: c for name, c in outcome.checks.items() if not c["ok"]}
    assert not failed, chaos.render(outcome)
    figures = outcome.figures
    assert figures["kills"] == 6 and figures["spawns"] == 7
    assert figures["rows"] == figures["distinct_event_ids"] == figures["valid_events"]
    assert figures["review_distinct"] == figures["flagged_events"] > 0
    assert figures["dead_letter_distinct"] == figures["broken_events"] > 0
    assert len(figures["kills_by_phase"]) >= 2  # kills landed in different phases of a worker's life
    assert figures["kills_while_assigned"] >= 1  # ... including while it held partitions and had work


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_in_one_group_sigkilled_in_turn_lose_and_double_nothing(
    postgres_url: str, tmp_path: Path, test_model_dir: Path
) -> None:
    config = chaos.Config(events=400, kills=4, members=2, database=postgres_url, seed=5, workdir=tmp_path,
                          drain_timeout_s=180, quiet=True)
    outcome = run(config)
    failed = {name: c for name, c in outcome.checks.items() if not c["ok"]}
    assert not failed, chaos.render(outcome)
    figures = outcome.figures
    assert figures["kills"] == 4 and figures["spawns"] == 6
    assert {k["member"] for k in outcome.kills} == {0, 1}  # both members were killed
    assert figures["rows"] == figures["distinct_event_ids"] == figures["valid_events"]
    assert figures["review_distinct"] == figures["flagged_events"] > 0
