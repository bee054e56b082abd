"""Read API speed at scale: 1 million verdicts in PostgreSQL, through /api/v1 with a bearer token.

    .venv/bin/python bench/api.py [--verdicts 1000000] [--open 100000] [--decided 50000] [--samples 300]
                                  [--out bench/results/api.json]

Fills a throw-away PostgreSQL database on 127.0.0.1:5432 as bench/console.py does (N verdicts over 30
days, 30% flagged, review items and decisions), puts the verdicts in time order (newer ids are newer
verdicts, as workers write them), marks 2% of the flagged verdicts uncertain and 0.1% of the others as
errors, then times the API through the real app in process (FastAPI over ASGI, a read
token checked on every request, JSON encoded), round-robin:

- item by id: `GET /api/v1/verdicts/{event_id}` (the verdict, its shadows, review item and decisions);
- content history: `GET /api/v1/content/{content_id}` (every verdict, review item and decision);
- a filtered page of 100 verdicts, one of: source; flagged category and source; action and 7 days;
  uncertain; errors; a content id; and the next page of each through its cursor;
- counts over the last 24 hours.

Prints p50/p95/max per call (milliseconds) against the targets and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
from common import RESULTS, machine_info, percentile, say  # noqa: E402
from console import CATEGORIES, SOURCES, fill  # noqa: E402
from sqlalchemy import text  # noqa: E402

from consumers.logs import configure_logging  # noqa: E402
from moderation.review.values import Role  # noqa: E402
from moderation.storage import create_engine_for, upgrade  # noqa: E402
from moderation.storage.api_tokens import ApiTokens, Scope  # noqa: E402
from tests.support.console import client, console_context  # noqa: E402

TARGETS_MS = {"item by id": 20, "content history": 20, "page of 100, filtered": 50, "next page (cursor)": 50,
              "counts, 24 hours": 300}


def mark(url: str, verdicts: int) -> None:
    """Verdicts in time order (ids grow with time, as they do when workers append them: the shared fill
    spreads them the other way round), some uncertain and some errors, so filters select something real."""
    engine = create_engine_for(url)
    with engine.begin() as conn:
        conn.execute(text("""UPDATE verdicts SET created_at = now() - (:n - id) * (interval '30 days' / :n),
                             uploaded_at = now() - (:n - id) * (interval '30 days' / :n)"""), {"n": verdicts})
        conn.execute(text("UPDATE verdicts SET uncertain = true WHERE flagged AND id % 50 = 7"))
        conn.execute(text("""UPDATE verdicts SET status = 'error', flagged = false, action = NULL, scores = '{}',
                             error_reason = 'fetch_timeout' WHERE NOT flagged AND id % 1000 = 3"""))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE verdicts"))
    engine.dispose()


def filters(i: int, now: datetime) -> dict[str, str]:
    category, source = CATEGORIES[i % 3], SOURCES[i % 4]
    shapes = [
        {"source": source},
        {"category": category, "source": source},
        {"action": "block", "since": (now - timedelta(days=7)).isoformat()},
        {"uncertain": "true"},
        {"status": "error"},
        {"content_id": f"content-{(i * 7919) % 700000}"},
        {"flagged": "true", "since": (now - timedelta(days=1)).isoformat(), "source": source},
    ]
    return shapes[i % len(shapes)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verdicts", type=int, default=1_000_000)
    parser.add_argument("--open", type=int, default=100_000)
    parser.add_argument("--decided", type=int, default=50_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS / "api.json")
    args = parser.parse_args()
    configure_logging("WARNING")
    name = f"bench_api_{secrets.token_hex(4)}"
    admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    samples: dict[str, list[float]] = {name: [] for name in TARGETS_MS}
    by_shape: dict[str, list[float]] = {}
    rng = random.Random(7)
    try:
        upgrade(url)
        started = time.perf_counter()
        fill(url, args.verdicts, args.open, args.decided)
        mark(url, args.verdicts)
        fill_s = time.perf_counter() - started
        say(f"filled in {fill_s:.0f} s")
        engine = create_engine_for(url)
        context = console_context(engine)
        context.accounts.add("dashboards", None, Role.REVIEWER, by="bench")
        secret, _ = ApiTokens(engine).create("bench", "dashboards", Scope.READ, by="bench")
        headers = {"Authorization": f"Bearer {secret}"}
        now = datetime.now(timezone.utc)
        with client(context) as api:

            def call(kind: str, path: str, params: dict[str, str] | None = None) -> dict:
                started_at = time.perf_counter()
                answer = api.get(path, params=params, headers=headers)
                elapsed = (time.perf_counter() - started_at) * 1000.0
                answer.raise_for_status()
                samples[kind].append(elapsed)
                return answer.json()

            for i in range(args.samples):
                event = rng.randint(1, args.verdicts)
                call("item by id", f"/api/v1/verdicts/ev-{event}")
                call("content history", f"/api/v1/content/content-{event % 700000}")
                shape = filters(i, now)
                first = call("page of 100, filtered", "/api/v1/verdicts", {**shape, "limit": "100"})
                by_shape.setdefault(",".join(sorted(shape)), []).append(samples["page of 100, filtered"][-1])
                if first["next_cursor"]:
                    call("next page (cursor)", "/api/v1/verdicts",
                         {**shape, "limit": "100", "cursor": first["next_cursor"]})
                if i % 10 == 0:
                    call("counts, 24 hours", "/api/v1/counts", {"since": (now - timedelta(days=1)).isoformat()})
                if i % 50 == 0:
                    say(f"{i}/{args.samples} samples")
        engine.dispose()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    rows = {}
    print(f"\nRead API, PostgreSQL, {args.verdicts:,} verdicts, {args.open:,} open items, "
          f"{args.decided:,} decided (fill {fill_s:.0f} s)\n")
    print("| call | samples | p50 ms | p95 ms | max ms | target p95 | met |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for kind, values in samples.items():
        p50, p95 = percentile(values, 50), percentile(values, 95)
        met = p95 is not None and p95 < TARGETS_MS[kind]
        rows[kind] = {"samples": len(values), "p50_ms": p50, "p95_ms": p95, "max_ms": max(values),
                      "target_p95_ms": TARGETS_MS[kind], "met": met, "raw_ms": [round(v, 2) for v in values]}
        print(f"| {kind} | {len(values)} | {p50:.1f} | {p95:.1f} | {max(values):.1f} | < {TARGETS_MS[kind]} | "
              f"{'yes' if met else 'NO'} |")
    print("\n| filter of the page of 100 | samples | p50 ms | p95 ms |")
    print("|---|---:|---:|---:|")
    shapes = {}
    for shape, values in by_shape.items():
        shapes[shape] = {"samples": len(values), "p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95)}
        print(f"| {shape} | {len(values)} | {percentile(values, 50):.1f} | {percentile(values, 95):.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": machine_info(), "verdicts": args.verdicts, "open_items": args.open, "decided": args.decided,
        "fill_s": round(fill_s, 1), "calls": rows, "page_filters": shapes,
    }, indent=2))
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
