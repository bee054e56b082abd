"""Review console speed at scale: 1 million verdicts and 100,000 open review items in PostgreSQL.

    .venv/bin/python bench/console.py [--verdicts 1000000] [--open 100000] [--decided 50000] [--samples 200]
                                      [--out bench/results/console.json]

Fills a throw-away PostgreSQL database on 127.0.0.1:5432 with SQL (`generate_series`: minutes, not
hours): N verdicts over 30 days (30% flagged), review items for `--open` + `--decided` of the flagged
ones, a decision for each decided item, spread over 30 days and 12 reviewers. Then times the console's
pages through the real app in process (FastAPI over ASGI, logged in, templates rendered, the same code
`moderation console` serves), round-robin:

- next item: `GET /queue` right after a decision, so every sample claims a new item;
- item page: `GET /items/{id}` of the item just claimed (scores, history, decisions);
- queue list with filters: `GET /items?status=pending&category=...&source=...`, and with a date range;
- stats over 30 days: `GET /stats`.

Prints p50/p95/max per page (milliseconds) against the targets and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
from common import RESULTS, machine_info, percentile, say  # noqa: E402
from sqlalchemy import text  # noqa: E402

from consumers.logs import configure_logging  # noqa: E402
from moderation.review.values import Role  # noqa: E402
from moderation.storage import create_engine_for, upgrade  # noqa: E402
from tests.support.console import PASSWORD, client, console_context, log_in  # noqa: E402

TARGETS_MS = {"next item": 50, "item page": 50, "queue list, filtered": 100, "queue list, date range": 100,
              "stats, 30 days": 300}
CATEGORIES = ["nsfw", "violent", "graphic"]
SOURCES = ["uploads-eu", "uploads-us", "uploads-apac", "kids-app"]


def fill(url: str, verdicts: int, open_items: int, decided: int) -> None:
    engine = create_engine_for(url)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        say(f"inserting {verdicts:,} verdicts")
        conn.execute(text("""
            INSERT INTO verdicts (event_id, content_id, source, status, flagged, top_category, action, scores,
                best_prompt, policy_version, policy_hash, model_id, image_ref, image_sha256, uploaded_at,
                load_ms, score_ms, created_at, uncertain, embedding_reused, audited)
            SELECT 'ev-' || g, 'content-' || (g % 700000),
                (ARRAY['uploads-eu','uploads-us','uploads-apac','kids-app'])[1 + g % 4],
                'ok', (g % 10) < 3,
                CASE WHEN (g % 10) < 3 THEN (ARRAY['nsfw','violent','graphic'])[1 + g % 3] ELSE 'safe' END,
                CASE WHEN (g % 10) < 1 THEN 'block' WHEN (g % 10) < 3 THEN 'review' ELSE 'allow' END,
                jsonb_build_object('safe', 0.5, 'nsfw', 0.2, 'violent', 0.2, 'graphic', 0.1),
                'a photo', '2026-12-01.1', repeat('ab', 32), 'sha256:' || repeat('cd', 32),
                'https://images.example.com/' || g || '.jpg', md5(g::text) || md5((g + 1)::text),
                :now - (g % 2592000) * interval '1 second', 12.0, 40.0,
                :now - (g % 2592000) * interval '1 second', false, false, false
            FROM generate_series(1, :n) AS g
        """), {"n": verdicts, "now": now})
        total = open_items + decided
        say(f"inserting {total:,} review items ({open_items:,} open)")
        conn.execute(text("""
            INSERT INTO review_items (event_id, content_id, source, reason, priority, category, queue, status,
                media_status, entered_at, decided_at, latest_decision_id, created_at)
            SELECT v.event_id, v.content_id, v.source, v.action, CASE v.action WHEN 'block' THEN 1 ELSE 2 END,
                v.top_category, v.top_category, CASE WHEN rn <= :decided THEN 'decided' ELSE 'pending' END,
                'off', v.created_at, CASE WHEN rn <= :decided THEN v.created_at + interval '1 hour' END,
                CASE WHEN rn <= :decided THEN md5(v.event_id) END, v.created_at
            FROM (SELECT *, row_number() OVER (ORDER BY id) AS rn FROM verdicts WHERE flagged) AS v
            WHERE rn <= :total
        """), {"decided": decided, "total": total})
        say(f"inserting {decided:,} decisions")
        conn.execute(text("""
            INSERT INTO review_decisions (decision_id, item_id, event_id, content_id, reviewer, kind, outcome,
                categories, reason, decided_at, published_at)
            SELECT latest_decision_id, id, event_id, content_id, 'reviewer-' || (id % 12), 'decide',
                CASE WHEN id % 5 = 0 THEN 'not_violating' ELSE 'violating' END,
                jsonb_build_object(category, id % 5 <> 0), 'seen', decided_at, decided_at
            FROM review_items WHERE status = 'decided'
        """))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("verdicts", "review_items", "review_decisions"):
            conn.execute(text(f"VACUUM ANALYZE {table}"))  # index-only scans need the visibility map
    engine.dispose()


def timed(fn) -> float:  # noqa: ANN001
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verdicts", type=int, default=1_000_000)
    parser.add_argument("--open", type=int, default=100_000)
    parser.add_argument("--decided", type=int, default=50_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "console.json")
    args = parser.parse_args()
    configure_logging("WARNING")  # a request line per page would drown the progress lines
    name = f"bench_console_{secrets.token_hex(4)}"
    admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        started = time.perf_counter()
        fill(url, args.verdicts, args.open, args.decided)
        fill_s = time.perf_counter() - started
        say(f"filled in {fill_s:.0f} s")
        engine = create_engine_for(url)
        context = console_context(engine)
        context.accounts.add("bench", PASSWORD, Role.LEAD, by="bench")
        samples: dict[str, list[float]] = {name: [] for name in TARGETS_MS}
        with client(context) as browser:
            log_in(browser, "bench")
            csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/items").text).group(1)
            since = (datetime.now(timezone.utc) - timedelta(days=7)).date().isoformat()
            for i in range(args.samples):
                category, source = CATEGORIES[i % 3], SOURCES[i % 4]
                started_at = time.perf_counter()
                claimed = browser.get("/queue")
                samples["next item"].append((time.perf_counter() - started_at) * 1000.0)
                item_path = claimed.headers["location"].split("?")[0]
                pages = {
                    "item page": (item_path, None),
                    "queue list, filtered": ("/items", {"status": "pending", "category": category, "source": source}),
                    "queue list, date range": ("/items", {"since": since, "reason": "block", "status": "pending"}),
                }
                if i % 10 == 0:
                    pages["stats, 30 days"] = ("/stats", None)
                for page_name, (path, params) in pages.items():
                    fetch = lambda p=path, q=params: browser.get(p, params=q).raise_for_status()  # noqa: E731
                    samples[page_name].append(timed(fetch))
                # Decide it (not timed), so the next GET /queue claims a new item.
                browser.post(f"{item_path}/decide", data={
                    "csrf": csrf, "category": [category], "violating": [category], "reason": "bench",
                })
                if i % 50 == 0:
                    say(f"{i}/{args.samples} samples")
        engine.dispose()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    rows = {}
    print(f"\nReview console, PostgreSQL, {args.verdicts:,} verdicts, {args.open:,} open items, "
          f"{args.decided:,} decided (fill {fill_s:.0f} s)\n")
    print("| page | samples | p50 ms | p95 ms | max ms | target p95 | met |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for page_name, values in samples.items():
        p50, p95 = percentile(values, 50), percentile(values, 95)
        met = p95 is not None and p95 < TARGETS_MS[page_name]
        rows[page_name] = {
            "samples": len(values), "p50_ms": p50, "p95_ms": p95, "max_ms": max(values),
            "target_p95_ms": TARGETS_MS[page_name], "met": met, "raw_ms": [round(v, 2) for v in values],
        }
        target = TARGETS_MS[page_name]
        print(f"| {page_name} | {len(values)} | {p50:.1f} | {p95:.1f} | {max(values):.1f} | < {target} | "
              f"{'yes' if met else 'NO'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": machine_info(), "verdicts": args.verdicts, "open_items": args.open, "decided": args.decided,
        "fill_s": round(fill_s, 1), "pages": rows,
    }, indent=2))
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
