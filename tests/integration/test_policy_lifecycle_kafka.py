"""Policy lifecycle on the real broker: a policy edited under a running worker, several policies by
source, shadow policies that are recorded but never acted on, and duplicate reuse with stored embeddings."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumers.pipeline import Worker
from consumers.producer import file_event
from moderation.moderator import Moderator
from moderation.policy_book import PolicyFiles
from moderation.reuse import EmbeddingCache
from moderation.settings import PolicySettings
from moderation.storage import EmbeddingStore, VerdictStore, create_engine_for, upgrade
from moderation.storage.models import shadow_verdicts_table
from moderation.testmodel import make_colour_image
from tests.support.kafka import PipelineEnv, committed_total, new_worker
from tests.support.policies import colour_policy

pytestmark = pytest.mark.kafka


def images(directory: Path, colours: list[str], seed: int = 0) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, colour in enumerate(colours):
        path = directory / f"{seed}-{i:03d}-{colour}.png"
        make_colour_image(colour, (64, 48), seed=seed * 100 + i).save(path, "PNG")
        paths.append(path)
    return paths


def wait_for(condition: Callable[[], bool], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


class Running:
    """A worker running in a thread until `stop()`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(self.stop_event)
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)
        self.worker.consumer.close(autocommit=False)
        self.worker.close()
        if self.errors:
            raise self.errors[0]


def metric(worker: Worker, name: str, **labels: str) -> float:
    return worker.metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_policy_edited_under_a_running_worker_applies_to_later_batches(
    pipeline_env: Any, sqlite_url: str, scorer: Any, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url, max_size=4, max_wait_ms=50)
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(colour_policy("v1"))
    files = PolicyFiles(PolicySettings(path=policy_path, reload_interval_s=0.1))
    upgrade(sqlite_url)
    store = VerdictStore(create_engine_for(sqlite_url))
    moderator = Moderator(scorer, files.book, env.settings.images, cache=EmbeddingCache(scorer.model_id))
    running = Running(new_worker(env, moderator, store, policies=files))
    phases: dict[str, list[str]] = {}
    try:
        for phase, edit in (("v1", None), ("v2", colour_policy("v2").replace("action: review", "action: block")),
                            ("broken", "version: v3\ncategories:\n  red: {prompts: [], threshold: 0.5}\n")):
            if edit is not None:
                policy_path.write_text(edit)
                time.sleep(0.3)  # past the reload interval: the next batch checks the file
            events = [
                file_event(path, source="uploads", content_id=path.stem)
                for path in images(tmp_path / phase, ["red", "blue", "yellow", "green"] * 2, seed=len(phases))
            ]
            phases[phase] = [e["event_id"] for e in events]
            env.produce(events)
            total = sum(len(ids) for ids in phases.values())
            wait_for(lambda total=total: committed_total(env.settings) >= total)
    finally:
        running.stop()
        moderator.close()
    worker = running.worker
    assert store.count() == 24  # none lost across the two swaps
    versions = {
        phase: Counter(store.get(i).policy_version for i in ids)  # type: ignore[union-attr]
        for phase, ids in phases.items()
    }
    assert versions == {"v1": Counter({"v1": 8}), "v2": Counter({"v2": 8}), "broken": Counter({"v2": 8})}
    red_actions = {
        phase: {store.get(i).action for i in ids if "red" in store.get(i).content_id}  # type: ignore[union-attr]
        for phase, ids in phases.items()
    }
    assert red_actions == {"v1": {"review"}, "v2": {"block"}, "broken": {"block"}}  # the last good one stayed
    assert metric(worker, "moderation_policy_reloads_total", result="applied") == 1
    assert metric(worker, "moderation_policy_reloads_total", result="refused") == 1
    assert metric(worker, "moderation_policy_info", version="v2", sha256=files.book.default.sha256) == 1
    v2 = {"role": "default", "source": "", "version": "v2", "sha256": files.book.default.sha256}
    assert metric(worker, "moderation_policies_info", **v2) == 1
    assert sum(1 for m in worker.metrics.policies.collect() for _ in m.samples) == 1  # v1 is gone
    store.engine.dispose()


def test_sources_shadows_and_duplicate_reuse_end_to_end(
    pipeline_env: Any, database_url: str, scorer: Any, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(database_url, max_size=8, max_wait_ms=100)
    (tmp_path / "default.yaml").write_text(colour_policy("default-1"))
    (tmp_path / "kids.yaml").write_text(colour_policy("kids-1").replace("action: review", "action: escalate"))
    # The shadow flags blue too: its verdicts must be recorded and never reach the review topic.
    (tmp_path / "shadow.yaml").write_text(
        colour_policy("shadow-1") + '  blue: {prompts: ["a blue picture"], threshold: 0.3, action: review}\n'
    )
    files = PolicyFiles(PolicySettings(
        path=tmp_path / "default.yaml", sources={"kids-app": tmp_path / "kids.yaml"},
        shadow=[tmp_path / "shadow.yaml"],
    ))
    upgrade(database_url)
    store = VerdictStore(create_engine_for(database_url))
    embeddings = EmbeddingStore(store.engine)
    paths = images(tmp_path / "images", ["red", "blue", "yellow", "green"])
    # Every image twice from each source: 16 events, 4 distinct images.
    events = [
        file_event(path, source=source, content_id=f"{source}-{path.stem}-{copy}")
        for copy in range(2) for source in ("uploads", "kids-app") for path in paths
    ]
    produced = env.produce(events)
    cache = EmbeddingCache(scorer.model_id, lookup=embeddings.get_many)
    moderator = Moderator(scorer, files.book, env.settings.images, cache=cache)
    running = Running(new_worker(env, moderator, store, policies=files))
    try:
        wait_for(lambda: committed_total(env.settings) >= produced)
    finally:
        running.stop()
        moderator.close()
    worker = running.worker

    verdicts = [store.get(e["event_id"]) for e in events]
    assert all(v is not None for v in verdicts) and store.count() == 16
    by_source = Counter((v.source, v.policy_version) for v in verdicts)  # type: ignore[union-attr]
    assert by_source == {("uploads", "default-1"): 8, ("kids-app", "kids-1"): 8}
    red_actions = {v.source: v.action for v in verdicts if "red" in v.content_id}  # type: ignore[union-attr]
    assert red_actions == {"uploads": "review", "kids-app": "escalate"}

    # Four distinct images: four forward passes, twelve reuses, four stored embeddings.
    assert sum(not v.embedding_reused for v in verdicts) == 4  # type: ignore[union-attr]
    assert embeddings.count() == 4
    assert metric(worker, "moderation_embeddings_reused_total") == 12
    assert metric(worker, "moderation_images_scored_total") == 4

    # Shadow verdicts: one per event, blue flagged there, and never published.
    with store.engine.connect() as conn:
        shadows = conn.execute(shadow_verdicts_table.select()).mappings().all()
    assert len(shadows) == 16 and {s["policy_version"] for s in shadows} == {"shadow-1"}
    shadow_flagged_blue = [s for s in shadows if s["flagged"] and s["top_category"] == "blue"]
    assert len(shadow_flagged_blue) == 4
    assert metric(worker, "moderation_shadow_disagreements_total", policy_version="shadow-1") == 4
    review = env.read(env.settings.kafka.review_topic)
    bodies = [json.loads(m.value) for m in review]
    assert sorted(b["top_category"] for b in bodies) == ["red"] * 4 + ["yellow"] * 4  # active verdicts only
    assert {b["policy_version"] for b in bodies} == {"default-1", "kids-1"}
    store.engine.dispose()


def test_independent_scoring_and_the_uncertain_band_end_to_end(
    pipeline_env: Any, postgres_url: str, scorer: Any, tmp_path: Path
) -> None:
    """Red scores a cosine of ~0.99 to its prompt; a band of 0.985-1.005 makes every red image uncertain."""
    env: PipelineEnv = pipeline_env(postgres_url, max_size=8, max_wait_ms=100)
    policy_path = tmp_path / "independent.yaml"
    policy_path.write_text(
        'version: "independent-1"\nscoring: independent\ncategories:\n'
        '  red: {prompts: ["a red picture"], threshold: 0.995, uncertain_margin: 0.01, action: block}\n'
        '  yellow: {prompts: ["a yellow picture"], threshold: 0.5, action: block}\n'
    )
    upgrade(postgres_url)
    store = VerdictStore(create_engine_for(postgres_url))
    events = [
        file_event(path, source="uploads", content_id=path.stem)
        for path in images(tmp_path / "images", ["red", "yellow", "blue", "green"] * 2)
    ]
    produced = env.produce(events)
    files = PolicyFiles(PolicySettings(path=policy_path))
    moderator = Moderator(scorer, files.book, env.settings.images)
    running = Running(new_worker(env, moderator, store, policies=files))
    try:
        wait_for(lambda: committed_total(env.settings) >= produced)
    finally:
        running.stop()
        moderator.close()
    verdicts = {v.content_id: v for v in (store.get(e["event_id"]) for e in events) if v is not None}
    assert len(verdicts) == 8
    outcomes = {"red": (True, True, "review"), "yellow": (True, False, "block")}  # (flagged, uncertain, action)
    for content_id, verdict in verdicts.items():
        colour = content_id.rsplit("-", 1)[-1]
        expected = outcomes.get(colour, (False, False, "allow"))
        assert (verdict.flagged, verdict.uncertain, verdict.action) == expected, content_id
        if colour == "red":
            assert 0.985 <= verdict.scores["red"] < 1.005  # a cosine, not a probability
    bodies = [json.loads(m.value) for m in env.read(env.settings.kafka.review_topic)]
    assert sorted((b["top_category"], b["action"], b["uncertain"]) for b in bodies) == [
        ("red", "review", True)
    ] * 2 + [("yellow", "block", False)] * 2
    assert metric(running.worker, "moderation_uncertain_total", category="red") == 2
    store.engine.dispose()
