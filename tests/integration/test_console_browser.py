"""The review console in a real browser: Playwright driving Debian's Chromium against `moderation
console`'s own wiring (consumers/console/server.py: the real database, media store and decisions topic).

Set MODERATION_TEST_SCREENSHOTS=docs to (re)take the README's screenshots.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from consumers.clients import read_topic
from consumers.console.server import serve
from consumers.settings import Settings
from moderation.media import DirectoryMediaStore, media_key, reviewer_copy
from moderation.policy import load_policy
from moderation.review.values import Actor, Role
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.accounts import Accounts
from moderation.storage.models import review_audit_table, review_decisions_table
from moderation.storage.review_queue import ReviewQueue
from moderation.verdict import MediaStatus, ReviewMedia, Verdict
from tests.integration.test_storage import make_verdict
from tests.support.console import PASSWORD
from tests.support.paths import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.kafka
HOSTILE = "<img src=x onerror=alert(1)>"
SCREENSHOTS = os.environ.get("MODERATION_TEST_SCREENSHOTS")


@dataclass
class Console:
    url: str
    settings: Settings
    store: VerdictStore
    accounts: Accounts


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (900, 600)) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, colour)
    for x in range(0, size[0], 60):  # stripes, so the blur is visible in a screenshot
        image.paste((255, 255, 255), (x, 0, x + 12, size[1]))
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def console(broker, tmp_path: Path, sqlite_url: str, test_model_dir: Path) -> Iterator[Console]:  # noqa: ANN001
    upgrade(sqlite_url)
    tag = secrets.token_hex(4)
    settings = Settings(
        data_dir=tmp_path,
        database={"url": sqlite_url},
        kafka={"bootstrap_servers": broker.bootstrap_servers, "decisions_topic": f"decisions-{tag}"},
        media={"directory": str(tmp_path / "media")},
        console={"host": "127.0.0.1", "port": 0, "ops_port": 0, "search_refresh_s": 0},
        policy={"path": str(REPO / "policies" / "default.yaml")},
        model={"name_or_path": str(test_model_dir), "device": "cpu"},  # search embeds queries with it
    )
    engine = create_engine_for(sqlite_url)
    listening: list[tuple[int, int]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            serve(settings, stop, on_listening=lambda port, ops: listening.append((port, ops)))
        except BaseException as exc:  # noqa: BLE001 - reported by the fixture
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not listening and not failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not failures and listening, failures
    try:
        yield Console(f"http://127.0.0.1:{listening[0][0]}", settings, VerdictStore(engine), Accounts(engine))
    finally:
        stop.set()
        thread.join(15)
        engine.dispose()


def seed(console: Console, *verdicts: tuple[Verdict, bytes | None]) -> None:
    """Store each verdict with a reviewer copy of its image made and stored as the worker does."""
    media = DirectoryMediaStore(Path(console.settings.media.directory))
    ready = []
    for verdict, image in verdicts:
        if image is not None:
            copy, width, height = reviewer_copy(image)
            key = media_key(verdict.image_sha256 or secrets.token_hex(32))
            media.put(key, copy)
            verdict = replace(verdict, media=ReviewMedia(MediaStatus.STORED, key=key, width=width, height=height))
        ready.append(verdict)
    for verdict in ready:  # one at a time: queue order is order of entry
        console.store.save_batch([verdict])
        time.sleep(0.01)


DEFAULT_POLICY = load_policy(REPO / "policies" / "default.yaml")


def flagged(n: int, **changes: object) -> Verdict:
    """A verdict of the console's own policy file, so its thresholds are shown beside the scores."""
    values: dict[str, object] = {
        "image_sha256": f"{n:064x}", "scores": {"safe": 0.12, "nsfw": 0.08, "violent": 0.71, "graphic": 0.09},
        "top_category": "violent", "action": "review", "best_prompt": "a person pointing a gun at someone",
        "policy_version": DEFAULT_POLICY.version, "policy_hash": DEFAULT_POLICY.sha256,
        "source": "uploads-eu", "content_id": f"photo-{n}",
    }
    return make_verdict(f"e{n}", **{**values, **changes})


@pytest.fixture
def chromium() -> Iterator[Callable[..., object]]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "the browser tests need Debian's chromium: apt-get install chromium (.ci/run does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def log_in(browser, console: Console, name: str):  # noqa: ANN001, ANN201 - Playwright objects
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{console.url}/queue")
    assert "/login" in page.url
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    return context, page


def shot(page, name: str) -> None:  # noqa: ANN001
    if SCREENSHOTS:
        target = REPO / SCREENSHOTS / name
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), full_page=False)


def test_a_reviewer_unblurs_decides_with_the_keyboard_and_the_decision_flows_out(console: Console, chromium) -> None:  # noqa: ANN001
    console.accounts.add("alice", PASSWORD, Role.REVIEWER, by="test")
    seed(console, (flagged(1, action="block"), jpeg((200, 30, 30))), (flagged(2), jpeg((30, 30, 200))))
    context, page = log_in(chromium, console, "alice")
    page.wait_for_url("**/items/1*")
    image = page.locator("#media img")
    image.wait_for()
    page.wait_for_function("document.querySelector('#media img').complete")
    assert "blur" in page.evaluate("getComputedStyle(document.querySelector('#media img')).filter")
    assert page.evaluate("document.querySelector('#media img').naturalWidth") == 512  # the reviewer copy
    assert "≥ 0.6 → review" in page.inner_text("table.scores")  # the violent category's threshold and action
    shot(page, "console-queue.png")
    page.click("#toggle-blur")
    assert page.evaluate("getComputedStyle(document.querySelector('#media img')).filter") == "none"
    page.keyboard.press("u")  # blurred again with the key
    assert "blur" in page.evaluate("getComputedStyle(document.querySelector('#media img')).filter")
    violent = page.locator("input[name=violating][value=violent]")
    index = violent.get_attribute("data-key")
    page.keyboard.press(index)
    assert violent.is_checked()
    page.keyboard.press("r")
    page.keyboard.type("a weapon pointed at a person")
    page.keyboard.press("Control+Enter")  # submit & next
    page.wait_for_url("**/items/2*")
    assert "photo-2" in page.inner_text("h1")

    engine = console.store.engine
    with engine.connect() as conn:
        decision = conn.execute(select(review_decisions_table)).mappings().one()
        actions = list(conn.execute(select(review_audit_table.c.action).order_by(review_audit_table.c.id)).scalars())
    assert (decision["reviewer"], decision["outcome"], decision["reason"]) == ("alice", "violating",
                                                                               "a weapon pointed at a person")
    assert decision["categories"]["violent"] is True
    assert "decide" in actions and "media_view" in actions and actions.count("claim") == 2
    deadline = time.monotonic() + 30
    messages: list[dict] = []
    while not messages and time.monotonic() < deadline:
        messages = [json.loads(r.value) for r in read_topic(console.settings, console.settings.kafka.decisions_topic,
                                                             idle_s=0.5)]
    assert [m["decision_id"] for m in messages] == [decision["decision_id"]]
    assert messages[0]["action"] == "remove" and messages[0]["content_id"] == "photo-1"
    context.close()


def test_two_reviewers_never_get_the_same_item(console: Console, chromium) -> None:  # noqa: ANN001
    for name in ("alice", "bob"):
        console.accounts.add(name, PASSWORD, Role.REVIEWER, by="test")
    seed(console, *((flagged(n), None) for n in range(1, 5)))
    alice_context, alice = log_in(chromium, console, "alice")
    bob_context, bob = log_in(chromium, console, "bob")
    alice.wait_for_url("**/items/*")
    bob.wait_for_url("**/items/*")
    assert alice.url.split("/items/")[1] != bob.url.split("/items/")[1]
    assert "Yours until" in alice.inner_text(".claim") and "Yours until" in bob.inner_text(".claim")
    # Alice opening Bob's item sees it is his, with no decision form.
    alice.goto(bob.url)
    assert "Claimed by bob" in alice.inner_text(".claim") and alice.locator("#decide").count() == 0
    alice_context.close()
    bob_context.close()


def test_hostile_text_is_shown_as_text(console: Console, chromium) -> None:  # noqa: ANN001
    console.accounts.add("alice", PASSWORD, Role.REVIEWER, by="test")
    seed(console, (flagged(1, content_id=HOSTILE, best_prompt=HOSTILE), jpeg((10, 200, 10))))
    context, page = log_in(chromium, console, "alice")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.wait_for_url("**/items/1*")
    assert page.inner_text(".content-id") == HOSTILE
    assert page.locator("img[src=x]").count() == 0
    page.goto(f"{console.url}/items")
    assert HOSTILE in page.inner_text("table.list")
    assert dialogs == []
    context.close()


def test_without_a_session_nothing_is_served_and_a_post_needs_the_token(console: Console, chromium) -> None:  # noqa: ANN001
    console.accounts.add("alice", PASSWORD, Role.LEAD, by="test")
    seed(console, (flagged(1), jpeg((200, 200, 30))))
    anonymous = chromium.new_context()
    page = anonymous.new_page()
    for path in ("/queue", "/items", "/items/1", "/stats", "/audit"):
        page.goto(console.url + path)
        assert "/login" in page.url, path
    assert page.request.get(f"{console.url}/media/1").status == 401
    anonymous.close()
    context, page = log_in(chromium, console, "alice")
    page.wait_for_url("**/items/1*")
    refused = page.request.post(f"{console.url}/items/1/decide",
                                form={"category": "violent", "violating": "violent", "reason": "forged"})
    assert refused.status == 403
    with console.store.engine.connect() as conn:
        assert conn.execute(select(review_decisions_table)).first() is None
    context.close()


def test_the_blur_preference_is_remembered_and_the_stats_page_shows_the_queue(console: Console, chromium) -> None:  # noqa: ANN001
    console.accounts.add("lena", PASSWORD, Role.LEAD, by="test")
    seed(console, *((flagged(n, action="block" if n % 2 else "review"), jpeg((120, 40, 160))) for n in range(1, 7)),
         (flagged(7, top_category="graphic", scores={"safe": 0.2, "nsfw": 0.1, "violent": 0.1, "graphic": 0.6}), None),
         (flagged(8, flagged=False, action="allow", top_category="safe", audited=True), None))
    queue = ReviewQueue(console.store.engine)
    for name, violating in (("alice", True), ("alice", False), ("bob", True)):
        actor = Actor(name, Role.REVIEWER)
        item = queue.next_item(actor, skip=[1])
        queue.decide(item.id, actor, {item.category or "violent": violating}, "seen")
    context, page = log_in(chromium, console, "lena")
    page.wait_for_url("**/items/1*")
    page.uncheck("#remember-blur")
    page.wait_for_timeout(300)  # the preference is saved in the background
    page.reload()
    page.locator("#media img").wait_for()
    assert page.evaluate("getComputedStyle(document.querySelector('#media img')).filter") == "none"
    assert console.accounts.get("lena").preferences["blur"] is False
    page.goto(f"{console.url}/stats")
    assert "violent" in page.inner_text("#pending")
    shot(page, "console-stats.png")
    context.close()


def test_a_reviewer_searches_by_text_and_then_for_more_like_a_hit(console: Console, chromium, scorer) -> None:  # noqa: ANN001
    from moderation.moderator import Moderator
    from moderation.policy import parse_policy
    from moderation.settings import ImageSettings
    from tests.support.events import event
    from tests.support.images import png
    from tests.support.policies import colour_policy

    console.accounts.add("alice", PASSWORD, Role.REVIEWER, by="test")
    images = {f"{colour}-{i}": png(colour, i) for colour in ("red", "yellow", "blue", "green") for i in range(3)}
    moderator = Moderator(scorer, parse_policy(colour_policy("live-1")), ImageSettings(), loader_threads=2)
    try:  # real verdicts with their embeddings; the flagged ones (red, yellow) with reviewer copies
        verdicts = moderator.moderate([event(name, data) for name, data in images.items()])
    finally:
        moderator.close()
    seed(console, *((v, images[v.event_id] if v.flagged else None) for v in verdicts))
    context, page = log_in(chromium, console, "alice")
    page.wait_for_url("**/items/*")
    page.click("nav >> text=Search")
    page.wait_for_url("**/search")
    deadline = time.monotonic() + 60
    while True:  # the index is built in the background when the console starts
        page.fill("#q", "a red picture")
        page.press("#q", "Enter")
        page.wait_for_load_state()
        if page.locator("#hits").count() or time.monotonic() > deadline:
            break
        page.wait_for_timeout(500)
    rows = page.locator("#hits tbody tr")
    assert rows.count() == 12
    first = [rows.nth(i).locator(".content-id").inner_text() for i in range(3)]
    assert all(content.startswith("content-red-") for content in first), first
    thumb = rows.nth(0).locator("figure.media img")
    thumb.wait_for()
    assert "blur" in page.evaluate("(img) => getComputedStyle(img).filter", thumb.element_handle())
    shot(page, "console-search.png")
    rows.nth(0).locator("text=more like this").click()
    page.wait_for_url("**/search?like=*")
    assert page.locator("#hits tbody tr").nth(0).locator(".content-id").inner_text() == first[0]
    assert "images like" in page.inner_text("#search-summary")
    context.close()


def test_a_lead_follows_an_item_to_its_policy_and_reads_the_trained_heads_report(
    console: Console, chromium, tmp_path: Path  # noqa: ANN001
) -> None:
    import numpy as np

    from moderation.heads import train_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    report = {"positives": 40, "negatives": 60, "folds": 5, "pull": 0.25, "threshold": 0.5,
              "zero_shot_threshold": 0.6, "head": {"precision": 0.93, "recall": 0.91, "f1": 0.92, "roc_auc": 0.97},
              "zero_shot": {"precision": 0.8, "recall": 0.4, "f1": 0.533, "roc_auc": 0.7},
              "curve": [{"labels": 25, "head": {"f1": 0.81}, "zero_shot": {"f1": 0.533}}], "thresholds": [],
              "expected_calibration_error": 0.03, "pull_note": HOSTILE}
    digest = train_head(x, x[:, 0] > 0, np.eye(8, dtype=np.float32)[0], category="violent",
                        model_id="sha256:m").save(tmp_path / "heads" / "violent-1.safetensors", report=report)
    pin = f"    head: {{file: heads/violent-1.safetensors, sha256: {digest}}}\n"
    shipped = (REPO / "policies" / "default.yaml").read_text()
    text = shipped.replace('version: "2026-11-27.1"', 'version: "2026-12-08.1"')
    text = text.replace("    threshold: 0.6\n", "    threshold: 0.6\n" + pin)
    (tmp_path / "trained.yaml").write_text(text)
    trained = load_policy(tmp_path / "trained.yaml")
    assert set(trained.heads) == {"violent"}
    console.accounts.add("lena", PASSWORD, Role.LEAD, by="test")
    verdict = flagged(1, policy_version=trained.version, policy_hash=trained.sha256)
    console.store.save_batch([verdict], policies=[trained])
    context, page = log_in(chromium, console, "lena")
    page.wait_for_url("**/items/1*")
    page.click(f"a[href='/policies/{trained.sha256}']")
    page.wait_for_url(f"**/policies/{trained.sha256}")
    heads = page.locator("#head-violent")
    heads.wait_for()
    table = heads.locator("table.head-metrics").inner_text()
    assert "trained head" in table and "0.92" in table and "0.533" in table
    assert "25 labels: 0.81 vs 0.533" in heads.inner_text()
    assert page.locator("img[src=x]").count() == 0  # nothing from the report is markup
    shot(page, "console-policy-heads.png")
    context.close()
