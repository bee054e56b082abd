"""The offline demo: an embedded broker, SQLite, sample images -> verdicts and review messages, then exit.

Everything runs on this machine: a Tansu broker child process on a free loopback port, a SQLite file
under the data directory, the small test model the repo builds (or a real checkpoint with --model).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from consumers.broker import EmbeddedBroker, broker_binary
from consumers.clients import ensure_topics, make_producer, read_topic
from consumers.errors import ExitCode
from consumers.messages import header
from consumers.producer import file_event, image_event, send_events
from consumers.service import build_moderator, run_worker
from consumers.settings import Settings
from moderation.settings import PolicySettings
from moderation.storage import VerdictStore, open_engine
from moderation.storage.migrate import upgrade
from moderation.verdict import Verdict

# (colour, width, height, format, inline?) - the test model was trained on noisy colour pictures.
SAMPLES = [
    ("red", 640, 480, "JPEG", False),
    ("blue", 512, 512, "PNG", True),
    ("green", 320, 240, "JPEG", False),
    ("red", 256, 256, "PNG", True),
    ("yellow", 480, 360, "JPEG", False),
    ("blue", 800, 600, "JPEG", True),
    ("green", 200, 300, "PNG", False),
    ("red", 300, 200, "JPEG", True),
]
WAIT_FOR_VERDICTS_S = 300.0
# The default of MODERATION_POLICY__PATH, relative to the working directory like every setting's path.
DEFAULT_POLICY_SETTING = PolicySettings.model_fields["path"].default


def bundled_policy(name: str) -> Path:
    """A policy file shipped with the code (the repo's ``policies/``), wherever the demo runs from.

    Found beside the packages of a source checkout or an editable install (the image is one); an install
    without the repo has no such file, and loading it then names the path it was expected at.
    """
    return Path(__file__).resolve().parent.parent / "policies" / name


def demo_policy(settings: Settings, policy: Path | None, *, using_test_model: bool) -> Path:
    """The policy the demo applies: --policy, else the test model's own, else the configured default.

    The configured default (``policies/default.yaml``) is relative to the working directory; when the
    demo runs elsewhere and it is not there, the copy shipped with the code is used instead.
    """
    if policy is not None:
        return policy
    if using_test_model:
        return bundled_policy("test-model.yaml")
    configured = settings.policy.path
    if configured == DEFAULT_POLICY_SETTING and not configured.is_file():
        return bundled_policy(configured.name)
    return configured


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _demo_settings(settings: Settings, data_dir: Path, policy: Path) -> Settings:
    # The sample images are written under data_dir/images and travel as file:// URLs, which a worker
    # reads only under its images.file_root: the demo's root is that directory.
    images = settings.images.model_copy(update={"allow_file": True, "file_root": (data_dir / "images").resolve()})
    updates: dict[str, Any] = {
        "images": images,
        "kafka": settings.kafka.model_copy(
            update={
                "consumer_group": f"moderation-demo-{int(time.time())}",
                "session_timeout_ms": 6000,  # the embedded broker's group join takes half of this
            }
        ),
        "database": settings.database.model_copy(update={"url": None}),
        "media": settings.media.model_copy(update={"directory": None}),  # reviewer copies in data_dir/media
        "data_dir": data_dir,
        "policy": settings.policy.model_copy(update={"path": policy}),
        "batching": settings.batching.model_copy(update={"max_size": 4, "max_wait_ms": 300}),
        "ops": settings.ops.model_copy(update={"host": "127.0.0.1", "port": 0}),  # never clash with a real worker
    }
    return settings.model_copy(update=updates)


def _write_samples(directory: Path) -> list[dict[str, Any] | bytes]:
    """Sample image files plus deliberately broken images and events: every path through the pipeline."""
    from moderation.testmodel import make_colour_image

    directory.mkdir(parents=True, exist_ok=True)
    events: list[dict[str, Any] | bytes] = []
    for i, (colour, width, height, fmt, inline) in enumerate(SAMPLES):
        path = directory / f"{i:02d}-{colour}.{fmt.lower().replace('jpeg', 'jpg')}"
        make_colour_image(colour, (width, height), seed=100 + i).save(path, fmt)
        events.append(file_event(path, source="demo", inline=inline, content_id=path.stem))
    truncated = directory / "08-truncated.jpg"
    truncated.write_bytes((directory / "00-red.jpg").read_bytes()[:300])
    events.append(file_event(truncated, source="demo", content_id=truncated.stem))
    events.append(image_event(content_id="09-not-an-image", source="demo", image_bytes=b"just some text"))
    missing = (directory / "nope.png").resolve().as_uri()
    events.append(image_event(content_id="10-missing-file", source="demo", image_url=missing))
    events.append(b"{this is not json")  # -> dead-letter topic
    events.append(json.dumps({"schema_version": 1, "event_id": "no-image", "content_id": "x"}).encode())
    return events


def run_demo(settings: Settings, *, model: str | None, policy: Path | None) -> ExitCode:
    broker_binary()  # before the model: without the demo extra, fail at once with the line that names it
    using_test_model = model is None
    if using_test_model:
        from moderation.testmodel import build_test_model

        _say("No --model given: using the small TEST model this repo builds offline. It tells colours apart")
        _say("(red -> review, yellow -> block); it is not a content model. Pass --model PATH for a real CLIP.")
        model = str(build_test_model(progress=_say))
    policy = demo_policy(settings, policy, using_test_model=using_test_model)

    data_dir = settings.data_dir / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)  # the store creates one directory level at most, and this is two
    # Model and policy first: a wrong --model or policy fails before anything is started.
    demo = _demo_settings(settings, data_dir, policy)
    moderator = build_moderator(demo, model=model)
    with EmbeddedBroker() as broker:
        _say(f"embedded broker (Tansu) on {broker.bootstrap_servers}, pid {broker.pid}")
        kafka = demo.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        demo = demo.model_copy(update={"kafka": kafka})
        upgrade(demo.database_url)
        _say(f"reviewer copies in {demo.media_directory}" if demo.media.enabled else "reviewer copies off")
        _say(f"SQLite database {demo.database_url.removeprefix('sqlite:///')}, model {model}, policy {policy}")
        ensure_topics(demo, [kafka.input_topic, kafka.review_topic, kafka.dead_letter_topic])

        events = _write_samples(data_dir / "images")
        producer = make_producer(demo)
        sent = send_events(producer, kafka.input_topic, events)
        producer.close(timeout=10)
        valid = sum(isinstance(e, dict) for e in events)  # the deliberately broken events are raw bytes
        _say(f"produced {sent} events to {kafka.input_topic} ({sent - valid} of them deliberately invalid)")

        stop = threading.Event()
        worker = threading.Thread(target=run_worker, args=(demo, stop, moderator), name="worker", daemon=True)
        worker.start()
        with open_engine(demo.database_url) as engine:
            store = VerdictStore(engine)
            deadline = time.monotonic() + WAIT_FOR_VERDICTS_S
            while store.count() < valid and time.monotonic() < deadline and worker.is_alive():
                time.sleep(0.2)
            stop.set()
            worker.join(timeout=60)
            verdicts = sorted(store.recent(limit=1000), key=lambda v: v.content_id)
        review = read_topic(demo, kafka.review_topic)
        dead = read_topic(demo, kafka.dead_letter_topic)

    _print_verdicts(verdicts)
    _print_review(review)
    _print_dead_letters(dead)
    flagged = {v.event_id for v in verdicts if v.flagged}
    reviewed = {json.loads(r.value)["event_id"] for r in review}
    ok = len(verdicts) == valid and flagged == reviewed and len(dead) == sent - valid
    print(
        f"\n{len(verdicts)}/{valid} events have a verdict; {len(flagged)} flagged, "
        f"{len(review)} review messages ({'one per flagged verdict' if flagged == reviewed else 'MISMATCH'}); "
        f"{len(dead)} dead-lettered."
    )
    if using_test_model:
        print("Scored by the offline test model (colours, not content).")
    _print_console_hint(data_dir, policy, settings.console.port, model)
    return ExitCode.OK if ok else ExitCode.FAILED


def _print_console_hint(data_dir: Path, policy: Path, port: int, model: str | None) -> None:
    """How to review the demo's flagged items in the browser: the console on the demo's database (and the
    demo's model, whose text tower the console's search embeds queries with)."""
    variables = f"MODERATION_DATA_DIR={shlex.quote(str(data_dir))} MODERATION_POLICY__PATH={shlex.quote(str(policy))}"
    if model is not None:
        variables += f" MODERATION_MODEL__NAME_OR_PATH={shlex.quote(model)}"
    print(
        "\nReview the flagged items in the browser (the review console, on the demo's database):\n"
        f"  export {variables}\n"
        "  moderation console user add me --role lead    # asks for a password\n"
        f"  moderation console                            # then open http://127.0.0.1:{port}"
    )


def _print_verdicts(verdicts: list[Verdict]) -> None:
    print(f"\nVerdicts ({len(verdicts)} rows in the verdicts table)")
    print(f"{'content id':<20} {'status':<6} {'flagged':<7} {'top category':<13} {'action':<8} {'score':>6}  reason")
    for v in verdicts:
        score = f"{v.scores[v.top_category]:.3f}" if v.top_category in v.scores else ""
        reason = v.error_reason or ""
        print(
            f"{v.content_id:<20} {v.status.value:<6} {'yes' if v.flagged else 'no':<7} "
            f"{v.top_category or '-':<13} {v.action or '-':<8} {score:>6}  {reason}"
        )


def _print_review(records: list[Any]) -> None:
    print(f"\nReview topic ({len(records)} messages)")
    print(f"{'key':<20} {'event id (header)':<38} {'category':<10} {'action':<8} {'media':<8} policy")
    for r in records:
        body = json.loads(r.value)
        print(
            f"{r.key.decode():<20} {header(r.headers, 'event_id') or '':<38} {body['top_category']:<10} "
            f"{body['action']:<8} {body.get('media_status', '-'):<8} {body['policy_version']}"
        )


def _print_dead_letters(records: list[Any]) -> None:
    print(f"\nDead-letter topic ({len(records)} messages)")
    for r in records:
        print(f"  {header(r.headers, 'dlq.reason'):<14} {(header(r.headers, 'dlq.detail') or '')[:90]}")
