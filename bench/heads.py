"""Trained heads: what labels buy on weak prompts, how long training takes, what a head costs to score.

    .venv/bin/python bench/heads.py [--repeats 20] [--rows 100000] [--out bench/results/heads.json]

1. The weak-prompt task, on the offline test CLIP (moderation/testmodel.py): category "warm" is red or
   yellow, but its only prompt is "a red picture" (independent scoring, threshold 0.5), so the prompts
   find half of it. Heads are trained on N labels (half in the category, drawn from 600 training
   pictures) and scored on 1,200 held-out pictures of fresh seeds, against the zero-shot policy on the
   same pictures; `--repeats` draws per N, median and minimum F1 reported.
2. Training time on `--rows` stored-precision embeddings, 512 wide as ViT-B/32's (random unit vectors
   labelled by a hidden direction near the prompt's): the head on every label (the pull chosen by
   cross-validation included), and the whole `policy train` evaluation (cross-validation, learning
   curve, calibration) besides.
3. Scoring cost: a batch of 32 through a random-init ViT-B/32 image tower (bench/models.py) against
   scoring its embeddings under policies/default.yaml with and without a head on each unsafe category.

Prints a table and writes JSON. The backtest of a policy with trained heads over 1M stored embeddings is
a row of bench/backtest.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import CACHE, POLICY, RESULTS, machine_info, policy_prompts, say  # noqa: E402
from models import build_random_clip  # noqa: E402

from moderation.category_scores import score_embeddings, to_stored  # noqa: E402
from moderation.clip_scorer import ClipScorer  # noqa: E402
from moderation.head_training import best_f1, train_category  # noqa: E402
from moderation.heads import metrics, train_head  # noqa: E402
from moderation.policy import load_policy, parse_policy  # noqa: E402
from moderation.preprocess import to_pixels  # noqa: E402
from moderation.testmodel import TEST_MODEL_COLOURS, build_test_model, make_colour_image  # noqa: E402

LABEL_COUNTS = (10, 25, 50, 100, 200)
WARM = ("red", "yellow")
WARM_POLICY = """
version: warm-1
scoring: independent
categories:
  warm: {prompts: ["a red picture"], threshold: 0.5, action: review}
"""


def colour_embeddings(scorer: ClipScorer, per_colour: int, first_seed: int) -> tuple[np.ndarray, np.ndarray]:
    pixels, warm = [], []
    for colour in TEST_MODEL_COLOURS:
        for i in range(per_colour):
            pixels.append(to_pixels(make_colour_image(colour, (48, 48), seed=first_seed + i), scorer.preprocess_spec))
            warm.append(colour in WARM)
    return to_stored(scorer.pixel_embeddings(pixels)).astype(np.float32), np.array(warm)


def weak_prompts(repeats: int, wrong: float = 0.0) -> dict[str, object]:
    """Heads from N labels against zero-shot on held-out pictures; `wrong`: the share of training labels
    flipped (reviewers err too)."""
    scorer = ClipScorer.load(str(build_test_model()), device="cpu")
    policy = parse_policy(WARM_POLICY)
    text = scorer.policy_text(policy)
    prior = text.category_embeddings[0].numpy()
    train_x, train_y = colour_embeddings(scorer, 100, first_seed=10_000)
    test_x, test_y = colour_embeddings(scorer, 200, first_seed=90_000)
    with torch.inference_mode():
        zero_shot_scores = score_embeddings(torch.from_numpy(test_x), text, policy.policy).scores[:, 0].numpy()
    zero_shot = metrics(zero_shot_scores, test_y, 0.5)
    # The most any threshold on the prompts' score could give on these very pictures (an upper bound).
    best = best_f1(zero_shot_scores, test_y)
    rng = np.random.default_rng(0)
    rows = []
    for count in LABEL_COUNTS:
        f1s, aucs, pulls = [], [], []
        for _ in range(repeats):
            chosen = np.concatenate([rng.choice(np.flatnonzero(train_y), count // 2, replace=False),
                                     rng.choice(np.flatnonzero(~train_y), count - count // 2, replace=False)])
            given = train_y[chosen].copy()
            flipped = rng.random(len(given)) < wrong
            given[flipped] = ~given[flipped]
            if min(int(given.sum()), int((~given).sum())) < 5:  # a draw the trainer would refuse
                given = train_y[chosen]
            head = train_head(train_x[chosen], given, prior)
            at = metrics(head.probabilities(test_x), test_y, 0.5)
            f1s.append(at.f1)
            aucs.append(at.roc_auc or 0.0)
            pulls.append("prompts only" if not np.isfinite(head.pull) else f"{head.pull:g}")
        rows.append({"labels": count, "f1_median": statistics.median(f1s), "f1_min": min(f1s),
                     "roc_auc_median": statistics.median(aucs), "gain_median": statistics.median(f1s) - zero_shot.f1,
                     "gain_min": min(f1s) - zero_shot.f1, "pulls": {p: pulls.count(p) for p in sorted(set(pulls))}})
        say(f"weak prompts ({wrong:.0%} wrong), {count} labels: "
            f"F1 median {rows[-1]['f1_median']:.3f} min {rows[-1]['f1_min']:.3f}")
    return {"zero_shot": zero_shot.as_dict(), "zero_shot_best_f1": round(best, 4), "held_out": len(test_y),
            "repeats": repeats, "wrong_labels": wrong,
            "by_labels": rows}


def training_time(rows: int) -> dict[str, object]:
    rng = np.random.default_rng(1)
    dim = 512
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x.astype(np.float16).astype(np.float32)  # as stored
    prior = rng.standard_normal(dim, dtype=np.float32)
    prior /= np.linalg.norm(prior)
    hidden = prior + 0.075 * rng.standard_normal(dim, dtype=np.float32)  # cosine to the prior about 0.5
    y = x @ hidden > np.quantile(x @ hidden, 0.9)  # 10% in the category
    started = time.perf_counter()
    head = train_head(x, y, prior)
    fit_s = time.perf_counter() - started
    # The whole evaluation of `policy train`, through the same function, on a one-category policy whose
    # text side is this prior.
    from moderation.category_scores import PolicyText

    policy = parse_policy("version: t\nscoring: independent\ncategories:\n"
                          "  hidden: {prompts: [x], threshold: 0.05, action: review}\n")
    text = PolicyText(torch.from_numpy(prior[None, :]), torch.from_numpy(prior[None, :]), ["x"],
                      torch.zeros(1, dtype=torch.long), 100.0)
    labels = [frozenset({"hidden"}) if v else frozenset() for v in y]
    started = time.perf_counter()
    report = train_category(policy, text, x, labels, "hidden", model_id="bench").report
    total_s = time.perf_counter() - started
    say(f"training on {rows:,}: head {fit_s:.2f} s, whole evaluation {total_s:.2f} s")
    return {"rows": rows, "dim": dim, "positives": int(y.sum()), "fit_s": round(fit_s, 3),
            "pull": None if not np.isfinite(head.pull) else head.pull, "evaluation_s": round(total_s, 3),
            "cv_f1": round(report.head.f1, 4), "cv_roc_auc": report.head.roc_auc,
            "zero_shot_roc_auc": report.zero_shot.roc_auc}


def scoring_cost(repeats: int = 7) -> dict[str, object]:
    prompts, _ = policy_prompts()
    model_dir = build_random_clip(CACHE / "clip-vit-b32-random", prompts)
    scorer = ClipScorer.load(str(model_dir), device="cpu")
    base = load_policy(POLICY)
    directory = CACHE / "heads-bench"
    directory.mkdir(parents=True, exist_ok=True)
    import yaml

    raw = yaml.safe_load(POLICY.read_text())
    rng = np.random.default_rng(2)
    text = scorer.policy_text(base)
    sample = rng.standard_normal((400, 512), dtype=np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    for j, (name, category) in enumerate(raw["categories"].items()):
        if "threshold" not in category:
            continue
        prior = text.category_embeddings[j].numpy()
        labels = sample @ prior > np.quantile(sample @ prior, 0.8)
        digest = train_head(sample, labels, prior, category=name, model_id=scorer.model_id, pull=1.0).save(
            directory / f"{name}.safetensors")
        category["head"] = {"file": f"{name}.safetensors", "sha256": digest}
        category["threshold"] = 0.5
    raw["version"] = "with-heads"
    (directory / "with-heads.yaml").write_text(yaml.safe_dump(raw))
    headed = load_policy(directory / "with-heads.yaml")
    pixels = torch.from_numpy(rng.standard_normal((32, 3, 224, 224), dtype=np.float32))
    forward, plain, with_heads = [], [], []
    embeddings = scorer.pixel_embeddings(pixels)  # warm-up
    for _ in range(repeats):
        started = time.perf_counter()
        embeddings = scorer.pixel_embeddings(pixels)
        forward.append(time.perf_counter() - started)
        stored = to_stored(embeddings)
        for policy, into in ((base, plain), (headed, with_heads)):
            started = time.perf_counter()
            for _ in range(20):
                scorer.score_embeddings(stored, policy)
            into.append((time.perf_counter() - started) / 20)
    forward_s, plain_s, headed_s = (statistics.median(v) for v in (forward, plain, with_heads))
    # The heads' own work, timed alone (the difference above is within the noise of the rest of scoring).
    text_with_heads = scorer.policy_text(headed)
    assert text_with_heads.head_weights is not None and text_with_heads.head_bias is not None
    rows = embeddings.float()
    head_only = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(1000):
            torch.sigmoid(rows @ text_with_heads.head_weights.T + text_with_heads.head_bias)
        head_only.append((time.perf_counter() - started) / 1000)
    head_s = statistics.median(head_only)
    say(f"batch of 32: forward {forward_s * 1000:.0f} ms, scoring {plain_s * 1000:.2f} ms, with heads "
        f"{headed_s * 1000:.2f} ms")
    return {"batch": 32, "heads": len(headed.heads), "forward_ms": round(forward_s * 1000, 1),
            "score_ms": round(plain_s * 1000, 3), "score_with_heads_ms": round(headed_s * 1000, 3),
            "heads_only_ms": round(head_s * 1000, 4), "heads_share_of_forward": round(head_s / forward_s, 6)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="label draws per count (default 20)")
    parser.add_argument("--rows", type=int, default=100_000, help="embeddings to time training on (default 100,000)")
    parser.add_argument("--out", type=Path, default=RESULTS / "heads.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, Any] = {"machine": machine_info(), "threads": torch.get_num_threads(),
               "weak_prompts": weak_prompts(args.repeats), "weak_prompts_noisy": weak_prompts(args.repeats, 0.1),
               "training": training_time(args.rows),
               "scoring": scoring_cost()}

    for weak in (results["weak_prompts"], results["weak_prompts_noisy"]):
        zero = weak["zero_shot"]
        print(f"\nweak prompts ('warm' = red or yellow, prompt 'a red picture'), {weak['held_out']} held-out "
              f"pictures, {weak['repeats']} draws per count, {weak['wrong_labels']:.0%} of training labels wrong")
        print(f"zero-shot at threshold 0.5: precision {zero['precision']:.3f} recall {zero['recall']:.3f} "
              f"F1 {zero['f1']:.3f} ROC AUC {zero['roc_auc']:.3f}; "
              f"at its best threshold F1 {weak['zero_shot_best_f1']:.3f}")
        print(f"{'labels':>7}{'F1 median':>11}{'F1 min':>9}{'gain median':>13}{'gain min':>10}"
              f"{'AUC median':>12}  pulls")
        for row in weak["by_labels"]:
            print(f"{row['labels']:>7}{row['f1_median']:>11.3f}{row['f1_min']:>9.3f}{row['gain_median']:>+13.3f}"
                  f"{row['gain_min']:>+10.3f}{row['roc_auc_median']:>12.3f}  {row['pulls']}")
    training = results["training"]
    print(f"\ntraining on {training['rows']:,} stored embeddings ({training['dim']} wide, "
          f"{training['positives']:,} positives): head {training['fit_s']:.2f} s; "
          f"whole policy-train evaluation {training['evaluation_s']:.2f} s")
    scoring = results["scoring"]
    print(f"scoring a batch of 32 under policies/default.yaml: forward {scoring['forward_ms']:.0f} ms; "
          f"scoring {scoring['score_ms']:.2f} ms, with {scoring['heads']} heads "
          f"{scoring['score_with_heads_ms']:.2f} ms "
          f"(the heads' own product {scoring['heads_only_ms'] * 1000:.0f} us: "
          f"{100 * scoring['heads_share_of_forward']:.4f}% of the forward pass)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
