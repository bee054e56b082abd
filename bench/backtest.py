"""Backtest speed: re-deciding N stored embeddings under a candidate policy, from a real database.

    .venv/bin/python bench/backtest.py [--rows 1000000] [--database sqlite|postgres] [--reps 3]
                                       [--out bench/results/backtest.json]

Fills a fresh database (SQLite file, or a throw-away PostgreSQL database on 127.0.0.1:5432) with N
verdicts and their float16 embeddings, 512 wide as ViT-B/32's, decided under policies/default.yaml by
the same code the worker uses. Then times `moderation policy backtest`'s work, in process: the scan
(`EmbeddingStore.scan`) and the scoring and comparison (`moderation.backtest.backtest`), for the
policy in force (which must change nothing) and for a candidate with other thresholds. The text side
comes from a random-init ViT-B/32 (see bench/models.py): the cost does not depend on the weights. A
third candidate scores every unsafe category with a trained head (moderation/heads.py), as a
`moderation policy train` draft does. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sqlite3
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import CACHE, POLICY, RESULTS, machine_info, policy_prompts, say  # noqa: E402
from models import build_random_clip  # noqa: E402

from moderation.backtest import backtest  # noqa: E402
from moderation.category_scores import score_embeddings  # noqa: E402
from moderation.clip_scorer import ClipScorer  # noqa: E402
from moderation.decision import decide_many  # noqa: E402
from moderation.policy import LoadedPolicy, load_policy, parse_policy  # noqa: E402
from moderation.storage import EmbeddingStore, create_engine_for, upgrade  # noqa: E402

DIM = 512
FILL_CHUNK = 50_000


def fill(url: str, rows: int, scorer: ClipScorer, policy: LoadedPolicy) -> None:
    """N verdicts decided under `policy` from random unit embeddings, plus those embeddings."""
    text = scorer.policy_text(policy)
    names = np.asarray(policy.policy.category_names, dtype=object)
    rng = np.random.default_rng(0)
    engine = create_engine_for(url)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for start in range(0, rows, FILL_CHUNK):
            n = min(FILL_CHUNK, rows - start)
            vectors = rng.standard_normal((n, DIM), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            stored = vectors.astype(np.float16)
            with torch.inference_mode():
                rows_in = torch.from_numpy(stored.astype(np.float32))
                scores = score_embeddings(rows_in, text, policy.policy).scores.numpy()
            decided = decide_many(scores, policy.policy)
            tops = names[decided.top]
            verdicts = []
            embeddings = []
            for i in range(n):
                number = start + i
                sha = f"{number:064x}"
                verdicts.append((
                    f"event-{number}", f"content-{number}", ("uploads", "kids-app")[number % 2], "ok",
                    bool(decided.flagged[i]), tops[i], decided.action[i], "{}", policy.version, policy.sha256,
                    scorer.model_id, f"inline:{sha}", sha, created, created, bool(decided.uncertain[i]), False,
                ))
                embeddings.append((scorer.model_id, sha, DIM, stored[i].tobytes(), created))
            placeholder = "?" if isinstance(raw.driver_connection, sqlite3.Connection) else "%s"
            marks = ", ".join([placeholder] * 17)
            cursor.executemany(
                "INSERT INTO verdicts (event_id, content_id, source, status, flagged, top_category, action, scores, "
                "policy_version, policy_hash, model_id, image_ref, image_sha256, uploaded_at, created_at, uncertain, "
                f"embedding_reused) VALUES ({marks})",
                verdicts,
            )
            marks = ", ".join([placeholder] * 5)
            cursor.executemany(
                f"INSERT INTO embeddings (model_id, image_sha256, dim, vector, created_at) VALUES ({marks})", embeddings
            )
            raw.commit()
            say(f"filled {start + n:,}/{rows:,} rows")
    finally:
        raw.close()
        engine.dispose()


def calibrated(policy_path: Path, scorer: ClipScorer, quantile: float, version: str, margin: float = 0.0) -> object:
    """policies/default.yaml with each threshold at the given quantile of its category's scores.

    Random embeddings against a random-init text tower give near-uniform probabilities, so the shipped
    thresholds would flag nothing; thresholds at quantiles flag a known share, as real traffic would.
    """
    import yaml

    raw = yaml.safe_load(policy_path.read_text())
    base = load_policy(policy_path)
    sample = np.random.default_rng(1).standard_normal((20_000, DIM), dtype=np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    with torch.inference_mode():
        scores = score_embeddings(torch.from_numpy(sample), scorer.policy_text(base), base.policy).scores.numpy()
    raw["version"] = version
    for j, (name, category) in enumerate(raw["categories"].items()):
        if "threshold" in category:
            category["threshold"] = round(float(np.quantile(scores[:, j], quantile)), 6)
            if margin:
                spread = float(np.quantile(scores[:, j], 0.99) - np.quantile(scores[:, j], 0.5))
                category["uncertain_margin"] = round(margin * spread, 6)
            assert name in base.policy.categories
    return parse_policy(yaml.safe_dump(raw), f"{version}.yaml")


def with_heads(policy_path: Path, scorer: ClipScorer, version: str) -> LoadedPolicy:
    """policies/default.yaml with a trained head on every unsafe category (moderation/heads.py), each
    trained on 20,000 random embeddings labelled by a direction near its prompts' and thresholded at its
    98th percentile, so it flags a known share: the candidate a `policy train` draft would be."""
    import yaml

    from moderation.heads import train_head

    raw = yaml.safe_load(policy_path.read_text())
    base = load_policy(policy_path)
    text = scorer.policy_text(base)
    rng = np.random.default_rng(3)
    sample = rng.standard_normal((20_000, DIM), dtype=np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    directory = CACHE / "backtest-heads"
    directory.mkdir(parents=True, exist_ok=True)
    for j, (name, category) in enumerate(raw["categories"].items()):
        if "threshold" not in category:
            continue
        prior = text.category_embeddings[j].numpy()
        truth = prior + 0.05 * rng.standard_normal(DIM, dtype=np.float32)
        labels = sample @ truth > np.quantile(sample @ truth, 0.9)
        head = train_head(sample, labels, prior, category=name, model_id=scorer.model_id)
        digest = head.save(directory / f"{name}.safetensors")
        category["head"] = {"file": f"{name}.safetensors", "sha256": digest}
        category["threshold"] = round(float(np.quantile(head.probabilities(sample), 0.98)), 6)
        category.pop("uncertain_margin", None)
    raw["version"] = version
    (directory / f"{version}.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_policy(directory / f"{version}.yaml")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="stored embeddings (default 1,000,000)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; the median is reported")
    parser.add_argument("--out", type=Path, default=RESULTS / "backtest.json")
    args = parser.parse_args()

    prompts, _ = policy_prompts()
    model_dir = build_random_clip(CACHE / "clip-vit-b32-random", prompts)
    scorer = ClipScorer.load(str(model_dir), device="cpu")
    # In force: about 1% flagged per unsafe category; the candidate: 3%, with an uncertain band.
    policy = calibrated(POLICY, scorer, 0.99, "in-force")
    candidate = calibrated(POLICY, scorer, 0.97, "candidate", margin=0.1)
    headed = with_heads(POLICY, scorer, "trained-heads")

    admin = None
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.database == "sqlite":
        path = CACHE / f"backtest-{secrets.token_hex(4)}.db"
        url = f"sqlite:///{path}"
    else:
        from sqlalchemy import create_engine, text

        name = f"bench_backtest_{secrets.token_hex(4)}"
        admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    results: dict[str, object] = {"rows": args.rows, "database": args.database, "machine": machine_info()}
    try:
        upgrade(url)
        started = time.perf_counter()
        fill(url, args.rows, scorer, policy)  # type: ignore[arg-type]
        results["fill_s"] = round(time.perf_counter() - started, 1)
        engine = create_engine_for(url)
        try:
            runs_of = (("policy in force", policy), ("candidate", candidate), ("trained heads", headed))
            for label, policy_under_test in runs_of:
                runs = []
                for rep in range(args.reps):
                    text = scorer.policy_text(policy_under_test)  # type: ignore[arg-type]
                    chunks = EmbeddingStore(engine).scan(scorer.model_id)
                    report = backtest(chunks, text, policy_under_test)  # type: ignore[arg-type]
                    runs.append(report)
                    say(f"{label} rep {rep + 1}: {report.items:,} items in {report.read_s + report.score_s:.1f} s")
                assert all(r.items == args.rows for r in runs), "the scan missed rows"
                if label == "policy in force":
                    unchanged = runs[0].newly_flagged == runs[0].no_longer_flagged == 0
                    assert unchanged, "the policy in force changed verdicts"
                results[label] = {
                    "total_s": statistics.median(r.read_s + r.score_s for r in runs),
                    "read_s": statistics.median(r.read_s for r in runs),
                    "score_s": statistics.median(r.score_s for r in runs),
                    "items_per_s": statistics.median(r.items_per_s for r in runs),
                    "changes": runs[0].as_dict(),
                }
        finally:
            engine.dispose()
    finally:
        if args.database == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        elif admin is not None:
            from sqlalchemy import text

            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    print(f"\nbacktest over {args.rows:,} stored {DIM}-wide float16 embeddings, {args.database}, median of {args.reps}")
    print(f"{'policy':<18}{'total s':>9}{'read s':>9}{'score s':>9}{'items/s':>12}{'newly':>9}{'no longer':>11}")
    for label in ("policy in force", "candidate", "trained heads"):
        row = results[label]
        changes = row["changes"]  # type: ignore[index]
        print(
            f"{label:<18}{row['total_s']:>9.1f}{row['read_s']:>9.1f}{row['score_s']:>9.1f}"  # type: ignore[index]
            f"{row['items_per_s']:>12,.0f}{changes['newly_flagged']:>9,}{changes['no_longer_flagged']:>11,}"  # type: ignore[index]
        )
    print(f"(filling the database took {results['fill_s']} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
