"""Chaos: SIGKILL `moderation run` workers at random moments while a stream flows, then count what happened.

    .venv/bin/python bench/chaos.py [--events 5000] [--kills 30] [--members 1|2] [--database sqlite|postgres|URL]
                                    [--seed 1] [--batch 16] [--session-timeout-ms 2000] [--out PATH]

It starts its own embedded broker, creates the topics, and runs real worker processes (`python -m
consumers.cli run`, configured through MODERATION_* variables, on the offline test model). The stream is a
seeded mix of flagged images (red: review, yellow: block), clean ones (blue, green), broken images (not an
image, truncated: `error` verdicts) and broken events (invalid JSON, bad base64, missing fields: dead
letters), all small inline images. It is produced in `kills + 1` slices, one in each kill cycle (for a
mid-stream kill, once the victim holds partitions), so every kill lands with work pending. Each kill picks
a member (with `--members 2`, either of two workers in one group) and a moment: `startup` (within 3 s of
the spawn: imports, model load, group join), `assigned` (just after the member logged its partition
assignment: first fetch and batch) or `mid-stream` (once it holds partitions and new verdict rows appear: a
batch is being persisted, published, flushed or committed). The killed worker is restarted at once. After
the last kill the workers run until the group has committed every record, get a SIGTERM, and the outcome is
checked:

- verdict rows = valid events (every event that is not dead-lettered), each event id once (count, count
  distinct, and a GROUP BY), each with the verdict its colour calls for;
- every flagged event on the review topic (and nothing else), repeats counted and reported;
- dead letters = broken events (repeats counted), committed offsets = events, every SIGTERM exit 0, no
  worker died on its own.

It prints a table, writes JSON (default bench/results/chaos-<time>.json) and exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
POLICY = REPO / "policies" / "test-model.yaml"
PHASES = ("startup", "assigned", "mid-stream")
PHASE_WEIGHTS = (0.2, 0.3, 0.5)
PHASE_WAIT_LIMIT_S = 30.0  # a phase that never comes (nothing left to do) still ends in a kill
# What each kind of event should become: a verdict action, `error` (a row with status error) or `dead`.
KINDS: dict[str, tuple[str, float]] = {
    "red": ("review", 0.175),
    "yellow": ("block", 0.175),
    "blue": ("allow", 0.225),
    "green": ("allow", 0.225),
    "not_an_image": ("error", 0.05),
    "truncated": ("error", 0.05),
    "invalid_json": ("dead", 0.034),
    "bad_base64": ("dead", 0.033),
    "missing_fields": ("dead", 0.033),
}
_STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Config:
    events: int = 5000
    kills: int = 30
    members: int = 1
    database: str = "sqlite"  # sqlite | postgres | a SQLAlchemy URL
    seed: int = 1
    batch: int = 16
    max_wait_ms: int = 100
    session_timeout_ms: int = 2000
    drain_timeout_s: float = 600.0
    workdir: Path | None = None  # default: a temporary directory, removed when every check passed
    keep_database: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class Planned:
    """One event of the stream and what must become of it."""

    index: int
    event_id: str
    kind: str
    expect: str  # review | block | allow | error | dead
    key: bytes | None
    value: bytes


# -- the stream -------------------------------------------------------------------------------------------


def image_pool(seed: int) -> dict[str, list[bytes]]:
    """A few small PNG and JPEG pictures per colour, encoded once and reused by many events."""
    from moderation.testmodel import make_colour_image

    pool: dict[str, list[bytes]] = {}
    for colour in ("red", "yellow", "blue", "green"):
        pool[colour] = []
        for i, size in enumerate([(48, 36), (40, 40), (56, 42), (36, 48)]):
            buffer = io.BytesIO()
            make_colour_image(colour, size, seed=seed * 100 + i).save(buffer, "PNG" if i % 2 else "JPEG")
            pool[colour].append(buffer.getvalue())
    return pool


def plan_stream(count: int, seed: int, tag: str) -> list[Planned]:
    """`count` events, a seeded mix of KINDS; event ids are `chaos-<tag>-<index>`."""
    from consumers.producer import image_event

    rng = random.Random(seed)
    pool = image_pool(seed)
    kinds = list(KINDS)
    weights = [KINDS[k][1] for k in kinds]
    planned = []
    for index in range(count):
        kind = rng.choices(kinds, weights)[0]
        event_id = f"chaos-{tag}-{index:06d}"
        content_id = f"item-{index:06d}"
        event: dict[str, Any] | None = None
        if kind in pool:
            event = image_event(content_id=content_id, source="chaos", event_id=event_id,
                                image_bytes=rng.choice(pool[kind]))
        elif kind == "not_an_image":
            event = image_event(content_id=content_id, source="chaos", event_id=event_id,
                                image_bytes=b"chaos: this is not an image " + event_id.encode())
        elif kind == "truncated":
            event = image_event(content_id=content_id, source="chaos", event_id=event_id,
                                image_bytes=pool["red"][0][:60])
        elif kind == "bad_base64":
            event = image_event(content_id=content_id, source="chaos", event_id=event_id, image_bytes=b"")
            event["image_base64"] = "!!not*base64!!"
        elif kind == "missing_fields":
            event = {"schema_version": 1, "event_id": event_id}
        if event is None:  # invalid_json
            value, key = f'{{"event_id": "{event_id}", not json'.encode(), None
        else:
            value, key = json.dumps(event, separators=(",", ":")).encode(), content_id.encode()
        planned.append(Planned(index, event_id, kind, KINDS[kind][0], key, value))
    return planned


def slices(count: int, parts: int) -> list[tuple[int, int]]:
    bounds = [round(count * i / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


# -- the database -----------------------------------------------------------------------------------------


class Database:
    """The verdicts database of one run: a fresh SQLite file, a fresh PostgreSQL database, or a given URL."""

    ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"

    def __init__(self, spec: str, workdir: Path, tag: str, keep: bool) -> None:
        self.spec = spec
        self.keep = keep
        self._created: str | None = None
        if spec == "sqlite":
            self.url = f"sqlite:///{workdir / 'verdicts.db'}"
        elif spec in ("postgres", "postgresql"):
            import psycopg

            self._created = f"chaos_{tag}"
            with psycopg.connect(self.ADMIN, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{self._created}"')
            self.url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self._created}"
        else:
            self.url = spec
        self.kind = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        from moderation.storage import create_engine_for, upgrade

        upgrade(self.url)
        self.engine = create_engine_for(self.url)

    def counts(self, prefix: str) -> tuple[int, int]:
        """(rows, distinct event ids) among this run's events."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows, distinct = conn.execute(
                text("SELECT count(*), count(DISTINCT event_id) FROM verdicts WHERE event_id LIKE :p"),
                {"p": prefix + "%"},
            ).one()
        return int(rows), int(distinct)

    def rows(self, prefix: str) -> list[tuple[str, str, bool, str | None]]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return [
                (r[0], r[1], bool(r[2]), r[3])
                for r in conn.execute(
                    text("SELECT event_id, status, flagged, action FROM verdicts WHERE event_id LIKE :p"),
                    {"p": prefix + "%"},
                )
            ]

    def repeated(self, prefix: str) -> list[str]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return [
                r[0]
                for r in conn.execute(
                    text("SELECT event_id FROM verdicts WHERE event_id LIKE :p GROUP BY event_id HAVING count(*) > 1"),
                    {"p": prefix + "%"},
                )
            ]

    def close(self) -> None:
        self.engine.dispose()
        if self._created and not self.keep:
            import psycopg

            with psycopg.connect(self.ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self._created}" WITH (FORCE)')


# -- worker processes -------------------------------------------------------------------------------------


class Member:
    """One slot of the consumer group: a `moderation run` process, respawned after every kill."""

    def __init__(self, slot: int, variables: dict[str, str], logdir: Path) -> None:
        self.slot = slot
        self.variables = variables
        self.logdir = logdir
        self.spawns = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self.spawned_at = 0.0
        self._read = 0
        self.assigned = False
        self.started = False
        self.last_event = ""

    def spawn(self) -> None:
        self.spawns += 1
        self.log = self.logdir / f"member{self.slot}-{self.spawns:03d}.log"
        with self.log.open("wb") as sink:  # a file, never a pipe: a full pipe would block the worker
            self.process = subprocess.Popen(
                [sys.executable, "-m", "consumers.cli", "run"], cwd=REPO, env={**os.environ, **self.variables},
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        self.spawned_at = time.monotonic()
        self._read = 0
        self.assigned = False
        self.started = False
        self.last_event = ""

    def follow(self) -> None:
        """Read the new lines of the log: has it been assigned partitions, what did it log last."""
        if self.log is None:
            return
        with self.log.open("rb") as handle:
            handle.seek(self._read)
            chunk = handle.read()
        end = chunk.rfind(b"\n") + 1
        self._read += end
        for line in chunk[:end].splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                event = json.loads(line).get("event", "")
            except ValueError:
                continue
            self.last_event = event
            if event == "partitions assigned":
                self.assigned = True
            elif event == "worker started":
                self.started = True

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout_s: float = 120.0) -> int | None:
        """SIGTERM: finish the batch in flight, commit, leave; the exit code (None if it had to be killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
            return None

    def tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def worker_variables(settings: Any, database_url: str, model_dir: Path, config: Config) -> dict[str, str]:
    kafka = settings.kafka
    return {
        "MODERATION_DATABASE__URL": database_url,
        "MODERATION_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "MODERATION_KAFKA__INPUT_TOPIC": kafka.input_topic,
        "MODERATION_KAFKA__REVIEW_TOPIC": kafka.review_topic,
        "MODERATION_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
        "MODERATION_KAFKA__CONSUMER_GROUP": kafka.consumer_group,
        "MODERATION_KAFKA__SESSION_TIMEOUT_MS": str(config.session_timeout_ms),
        "MODERATION_BATCHING__MAX_SIZE": str(config.batch),
        "MODERATION_BATCHING__MAX_WAIT_MS": str(config.max_wait_ms),
        "MODERATION_MODEL__NAME_OR_PATH": str(model_dir),
        "MODERATION_MODEL__DEVICE": "cpu",
        "MODERATION_POLICY__PATH": str(POLICY),
        "MODERATION_LOG__FORMAT": "json",
        "MODERATION_OPS__ENABLED": "false",
        "OMP_NUM_THREADS": "1",  # two members on two cores: do not fight over threads
    }


# -- the run ----------------------------------------------------------------------------------------------


@dataclass
class Kill:
    number: int
    member: int
    phase: str
    seconds_after_spawn: float
    assigned: bool
    last_logged: str
    rows_at_kill: int
    committed_at_kill: int


@dataclass
class Outcome:
    config: dict[str, Any]
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    kills: list[dict[str, Any]] = field(default_factory=list)
    unexpected_exits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks.values())

    def check(self, name: str, expected: Any, observed: Any, ok: bool | None = None) -> None:
        self.checks[name] = {"expected": expected, "observed": observed,
                             "ok": bool(expected == observed if ok is None else ok)}


class Committed:
    """The group's committed offsets on the input topic, summed over partitions."""

    def __init__(self, settings: Any) -> None:
        from kafka import KafkaAdminClient

        self.settings = settings
        self.admin = KafkaAdminClient(**settings.kafka.client_options())

    def total(self) -> int:
        group = self.settings.kafka.consumer_group
        try:
            offsets = self.admin.list_group_offsets(group).get(group, {})
        except Exception:  # noqa: BLE001 - the coordinator may be rebalancing; ask again next time
            return -1
        topic = self.settings.kafka.input_topic
        return sum(max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic == topic)

    def close(self) -> None:
        self.admin.close()


def run_chaos(config: Config, log: Any = say) -> Outcome:  # noqa: C901 - one story, told in order
    from consumers.broker import EmbeddedBroker
    from consumers.clients import ensure_topics, make_producer
    from consumers.settings import Settings
    from moderation.testmodel import build_test_model

    began = time.monotonic()
    quiet = config.quiet
    tag = secrets.token_hex(4)
    prefix = f"chaos-{tag}-"
    rng = random.Random(config.seed)
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(config={**asdict(config), "workdir": str(workdir)})
    model_dir = build_test_model(progress=log)
    plan = plan_stream(config.events, config.seed, tag)
    valid = [p for p in plan if p.expect != "dead"]
    dead = [p for p in plan if p.expect == "dead"]
    flagged = [p for p in plan if p.expect in ("review", "block")]
    log(f"stream: {len(plan)} events, {len(flagged)} flagged, {len(valid) - len(flagged)} clean or broken images, "
        f"{len(dead)} broken events; {dict(Counter(p.kind for p in plan))}")
    members: list[Member] = []
    with EmbeddedBroker() as broker:
        settings = Settings(
            data_dir=workdir,
            kafka={"bootstrap_servers": broker.bootstrap_servers, "input_topic": f"chaos-images-{tag}",
                   "review_topic": f"chaos-review-{tag}", "dead_letter_topic": f"chaos-dlq-{tag}",
                   "consumer_group": f"chaos-{tag}", "session_timeout_ms": config.session_timeout_ms},
        )
        kafka = settings.kafka
        ensure_topics(settings, [kafka.input_topic, kafka.review_topic, kafka.dead_letter_topic])
        database = Database(config.database, workdir, tag, config.keep_database)
        outcome.config["database_kind"] = database.kind
        committed = Committed(settings)
        producer = make_producer(settings, linger_ms=10)
        variables = worker_variables(settings, database.url, model_dir, config)
        members = [Member(slot, variables, workdir) for slot in range(config.members)]
        parts = slices(len(plan), config.kills + 1)

        def produce(part: int) -> None:
            start, end = parts[part]
            for p in plan[start:end]:
                producer.send(kafka.input_topic, key=p.key, value=p.value)
            producer.flush(timeout=60)

        def rows() -> int:
            return database.counts(prefix)[0]

        def watch_members() -> None:
            """A member that died without being killed is a failure: record it and start it again."""
            for member in members:
                member.follow()
                if member.process is not None and not member.alive():
                    outcome.unexpected_exits.append(
                        {"member": member.slot, "exit": member.process.returncode, "log_tail": member.tail()}
                    )
                    log(f"member {member.slot} exited by itself ({member.process.returncode}); restarting it")
                    member.spawn()

        try:
            produce(0)
            for member in members:
                member.spawn()
            for number in range(1, config.kills + 1):
                victim = rng.choice(members)
                phase = rng.choices(PHASES, PHASE_WEIGHTS)[0]
                limit = time.monotonic() + PHASE_WAIT_LIMIT_S
                if phase != "mid-stream":
                    produce(number)  # the next slice: work is pending whatever moment the kill lands on
                if phase == "startup":
                    victim = max(members, key=lambda m: m.spawned_at)  # the youngest member
                    until = victim.spawned_at + rng.uniform(0.2, 3.0)
                    if time.monotonic() > until:  # it is already past its start-up: any moment will do
                        phase, until = "any-moment", time.monotonic() + rng.uniform(0.0, 1.0)
                    while time.monotonic() < until:
                        watch_members()
                        time.sleep(0.02)
                elif phase == "assigned":
                    while not victim.assigned and time.monotonic() < limit:
                        watch_members()
                        time.sleep(0.02)
                    time.sleep(rng.uniform(0.0, 0.4))
                else:
                    while not victim.assigned and time.monotonic() < limit:  # it must hold partitions
                        watch_members()
                        time.sleep(0.02)
                    # Only now the next slice: with two members, the survivor would otherwise have drained
                    # it while the victim was still starting.
                    produce(number)
                    target = rows() + rng.randint(1, 3 * config.batch)
                    while rows() < target and time.monotonic() < limit:
                        watch_members()
                        time.sleep(0.02)
                    time.sleep(rng.uniform(0.0, 0.15))
                watch_members()
                after_s = time.monotonic() - victim.spawned_at
                victim.kill()
                victim.follow()
                kill = Kill(number, victim.slot, phase, round(after_s, 2), victim.assigned, victim.last_event,
                            rows(), committed.total())
                outcome.kills.append(asdict(kill))
                if not quiet or number == config.kills:
                    log(f"kill {number}/{config.kills}: member {victim.slot} {phase} {after_s:.2f}s after spawn "
                        f"(last logged: {victim.last_event or '-'}); rows {kill.rows_at_kill}, "
                        f"committed {kill.committed_at_kill}")
                victim.spawn()
            log(f"all {config.kills} kills done; letting the group finish")
            deadline = time.monotonic() + config.drain_timeout_s
            next_report = time.monotonic()
            done_committed = done_rows = -1
            while time.monotonic() < deadline:
                watch_members()
                done_committed, done_rows = committed.total(), rows()
                # A member SIGTERMed before it has installed its signal handlers (while importing and
                # loading the model) dies of the signal; that is not the shutdown under test.
                if done_committed >= len(plan) and done_rows >= len(valid) and all(m.started for m in members):
                    break
                if time.monotonic() >= next_report:
                    log(f"draining: rows {done_rows}/{len(valid)}, committed {done_committed}/{len(plan)}")
                    next_report += 10
                time.sleep(0.25)
            drained_s = time.monotonic() - began
            log(f"drained: rows {done_rows}/{len(valid)}, committed {done_committed}/{len(plan)}; stopping workers")
            exits = [member.terminate() for member in members]
            final_committed = committed.total()
            for _ in range(20):  # -1: the coordinator was busy (the group just emptied); ask again
                if final_committed >= 0:
                    break
                time.sleep(0.5)
                final_committed = committed.total()
            outcome.figures.update(_gather(settings, database, prefix, plan, log))
        finally:
            for member in members:  # whatever happened, leave no worker behind (only our own PIDs)
                if member.alive():
                    member.process.kill()  # type: ignore[union-attr]
                    member.process.wait(timeout=30)  # type: ignore[union-attr]
            producer.close(timeout=10)
            committed.close()
            database.close()
    figures = outcome.figures
    figures.update({
        "events": len(plan), "valid_events": len(valid), "flagged_events": len(flagged), "broken_events": len(dead),
        "kills": len(outcome.kills), "kills_by_phase": dict(Counter(k["phase"] for k in outcome.kills)),
        "kills_while_assigned": sum(k["assigned"] for k in outcome.kills),
        "spawns": sum(m.spawns for m in members), "committed": final_committed, "exit_codes_on_sigterm": exits,
        "wall_s": round(time.monotonic() - began, 1), "until_drained_s": round(drained_s, 1),
    })
    _judge(outcome, plan)
    if outcome.ok and config.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome


def _gather(settings: Any, database: Database, prefix: str, plan: list[Planned], log: Any) -> dict[str, Any]:
    from consumers.clients import read_topic
    from consumers.messages import header

    rows, distinct = database.counts(prefix)
    stored = database.rows(prefix)
    expected = {p.event_id: p.expect for p in plan}
    wrong = []
    for event_id, status, is_flagged, action in stored:
        want = expected.get(event_id)
        if want == "error":
            good = status == "error" and not is_flagged
        elif want in ("review", "block"):
            good = status == "ok" and is_flagged and action == want
        else:
            good = status == "ok" and not is_flagged and action == "allow"
        if not good:
            wrong.append({"event_id": event_id, "expected": want, "status": status, "action": action})
    log("reading the review and dead-letter topics")
    timeout_s = 60 + len(plan) / 50
    review = read_topic(settings, settings.kafka.review_topic, idle_s=3.0, timeout_s=timeout_s)
    review_ids = Counter(header(r.headers, "event_id") or "" for r in review)
    dead = read_topic(settings, settings.kafka.dead_letter_topic, idle_s=3.0, timeout_s=timeout_s)
    pattern = re.compile(re.escape(prefix).encode() + rb"\d+")
    dead_ids = Counter((m.group().decode() if (m := pattern.search(r.value or b"")) else "?") for r in dead)
    return {
        "rows": rows, "distinct_event_ids": distinct, "duplicate_rows": rows - distinct,
        "repeated_event_ids": database.repeated(prefix)[:20],
        "wrong_verdicts": len(wrong), "wrong_verdict_examples": wrong[:5],
        "review_messages": sum(review_ids.values()), "review_distinct": len(review_ids),
        "review_duplicates": sum(review_ids.values()) - len(review_ids),
        "review_ids": review_ids, "dead_letters": sum(dead_ids.values()), "dead_letter_distinct": len(dead_ids),
        "dead_letter_duplicates": sum(dead_ids.values()) - len(dead_ids), "dead_ids": dead_ids,
    }


def _judge(outcome: Outcome, plan: list[Planned]) -> None:
    f = outcome.figures
    valid = {p.event_id for p in plan if p.expect != "dead"}
    flagged = {p.event_id for p in plan if p.expect in ("review", "block")}
    dead = {p.event_id for p in plan if p.expect == "dead"}
    review_ids, dead_ids = set(f.pop("review_ids")), set(f.pop("dead_ids"))
    outcome.check("verdict rows = valid events", len(valid), f["rows"])
    outcome.check("distinct event ids in rows", len(valid), f["distinct_event_ids"])
    outcome.check("duplicate rows (GROUP BY event_id)", [], f["repeated_event_ids"])
    outcome.check("verdicts not matching the image", 0, f["wrong_verdicts"])
    outcome.check("flagged events missing from the review topic", 0, len(flagged - review_ids))
    outcome.check("review messages for unflagged events", 0, len(review_ids - flagged))
    outcome.check("broken events missing from the dead-letter topic", 0, len(dead - dead_ids))
    outcome.check("dead letters for valid events", 0, len(dead_ids - dead))
    outcome.check("committed offsets = events", len(plan), f["committed"])
    outcome.check("kills", outcome.config["kills"], f["kills"])
    outcome.check("workers that died on their own", 0, len(outcome.unexpected_exits))
    outcome.check("exit codes after SIGTERM", [0] * outcome.config["members"], f["exit_codes_on_sigterm"])


def render(outcome: Outcome) -> str:
    c, f = outcome.config, outcome.figures
    lines = [
        f"chaos: {f['events']} events, {f['kills']} SIGKILLs, {c['members']} member(s), {c['database_kind']}, "
        f"seed {c['seed']}, batch {c['batch']}, session {c['session_timeout_ms']} ms",
        "",
        f"{'check':<50} {'expected':>10} {'observed':>10}  ok",
    ]
    for name, check in outcome.checks.items():
        expected, observed = (",".join(map(str, v)) or "none" if isinstance(v, list) else v
                              for v in (check["expected"], check["observed"]))
        lines.append(f"{name:<50} {expected!s:>10} {observed!s:>10}  {'yes' if check['ok'] else 'NO'}")
    lines += [
        "",
        f"verdict rows {f['rows']} (distinct event ids {f['distinct_event_ids']}, duplicates {f['duplicate_rows']})",
        f"review messages {f['review_messages']} for {f['flagged_events']} flagged events "
        f"(distinct {f['review_distinct']}, duplicates {f['review_duplicates']})",
        f"dead letters {f['dead_letters']} for {f['broken_events']} broken events "
        f"(distinct {f['dead_letter_distinct']}, duplicates {f['dead_letter_duplicates']})",
        f"kills by phase {f['kills_by_phase']}, {f['kills_while_assigned']} after the member had partitions; "
        f"{f['spawns']} worker processes started",
        f"wall {f['wall_s']} s (until drained {f['until_drained_s']} s)",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[Config, Path]:
    parser = argparse.ArgumentParser(
        description="SIGKILL moderation workers at random moments and check nothing was lost or doubled.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=5000, help="events in the stream")
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs, each followed by a restart")
    parser.add_argument("--members", type=int, choices=(1, 2), default=1, help="workers in the group")
    parser.add_argument("--database", default="sqlite", help="sqlite, postgres (127.0.0.1:5432) or a URL")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16, help="MODERATION_BATCHING__MAX_SIZE")
    parser.add_argument("--max-wait-ms", type=int, default=100, help="MODERATION_BATCHING__MAX_WAIT_MS")
    parser.add_argument("--session-timeout-ms", type=int, default=2000)
    parser.add_argument("--drain-timeout-s", type=float, default=600.0, help="how long the final drain may take")
    parser.add_argument("--workdir", type=Path, help="keep the worker logs here (default: a temporary directory)")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the PostgreSQL database")
    parser.add_argument("--quiet", action="store_true", help="one line per run phase, not per kill")
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/results/chaos-<time>.json)")
    args = parser.parse_args(argv)
    if args.events < 1 or args.kills < 0:
        parser.error("--events must be positive and --kills not negative")
    out = args.out or RESULTS / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
    config = Config(
        events=args.events, kills=args.kills, members=args.members, database=args.database, seed=args.seed,
        batch=args.batch, max_wait_ms=args.max_wait_ms, session_timeout_ms=args.session_timeout_ms,
        drain_timeout_s=args.drain_timeout_s, workdir=args.workdir, keep_database=args.keep_database,
        quiet=args.quiet,
    )
    return config, out


def main(argv: list[str] | None = None) -> int:
    config, out = parse_args(argv)
    # Stopped early (SIGTERM, or Ctrl-C even when started in the background, where SIGINT comes ignored):
    # unwind, so the workers are killed, the broker stopped and the database dropped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from consumers.logs import configure_logging

    configure_logging("WARNING")
    outcome = run_chaos(config)
    result = asdict(outcome) | {"ok": outcome.ok, "machine": {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
    }}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(render(outcome))
    say(f"wrote {out}")
    if not outcome.ok:
        say(f"FAILED; worker logs in {outcome.config['workdir']}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
