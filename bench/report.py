"""The printed table: one row per measure, one column per image size, then the run-wide figures."""

from __future__ import annotations

from typing import Any

# (key, label); keys starting with "ratio:" name a ratio of two measures' medians.
ROWS: list[tuple[str, str]] = [
    ("a", "(a) CLIP README loop, 1 image at a time, text re-encoded per image"),
    ("b", "(b) HF zero-shot pipeline, batch 32, labels re-encoded per image"),
    ("c", "(c) our scorer: Moderator.moderate (load+decode+preprocess+forward+decide)"),
    ("c8", "(c') our scorer, cpu_mode=int8"),
    ("d", "(d) whole pipeline: Kafka -> worker -> SQLite + review topic"),
    ("e", "(e) model forward only, fp32, prebuilt batch"),
    ("e8", "(e') model forward only, int8"),
    ("l", "(l) image loading alone, 1 thread: read + decode + preprocess"),
    ("ratio:d/e", "(d)/(e) pipeline vs model ceiling"),
    ("ratio:d/e_by_cpu", "(d)/(e) by CPU time: (e) core-ms/img over (d) core-ms/img"),
    ("ratio:c/e", "(c)/(e) scorer vs model ceiling"),
    ("ratio:d/a", "(d)/(a) vs README loop"),
    ("ratio:d/b", "(d)/(b) vs HF pipeline"),
    ("ratio:e8/e", "(e')/(e) int8 forward vs fp32 forward"),
    ("ratio:c8/c", "(c')/(c) int8 scorer vs fp32 scorer"),
]


def _cell(size: dict[str, Any], key: str) -> str:
    if key.startswith("ratio:"):
        value = size.get("ratios", {}).get(key.removeprefix("ratio:"))
        return "-" if value is None else f"{value:.2f}x"
    measure = size.get("measures", {}).get(key, {})
    median = measure.get("median")
    if median is None:
        return "failed" if key in size.get("failures", {}) else "-"
    spread = f" ({measure['min']:.1f}-{measure['max']:.1f})" if len(measure["reps"]) > 1 else ""
    return f"{median:.2f}{spread}"


def render_table(results: dict[str, Any]) -> str:
    """Markdown: img/s medians (min-max over reps in brackets), ratios of medians, then run-wide lines."""
    sizes = list(results.get("sizes", {}).values())
    header = "| measure (img/s, median (min-max)) | " + " | ".join(s["size"] for s in sizes) + " |"
    lines = [header, "|---|" + "---:|" * len(sizes)]
    for key, label in ROWS:
        cells = [_cell(s, key) for s in sizes]
        if all(c == "-" for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key in ("c", "d", "e", "l"):
        cells = []
        for s in sizes:
            m = s.get("core_ms_per_img", {}).get(key, {})
            cells.append(f"{m['median']:.0f}" if m.get("median") else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| ({key}) CPU cost, core-ms per image (median) | " + " | ".join(cells) + " |")
    review = []
    for s in sizes:
        reps = s.get("pipeline_reps", [])
        review.append(
            "/".join(f"{r['review_messages']}={r['flagged_rows']}" if r["review_messages"] == r["flagged_rows"]
                     else f"{r['review_messages']}!={r['flagged_rows']}" for r in reps) or "-"
        )
    lines.append("| (d) review messages = flagged rows, per rep | " + " | ".join(review) + " |")
    lines.append("")
    lines += _run_wide(results)
    return "\n".join(lines)


def _run_wide(results: dict[str, Any]) -> list[str]:
    machine = results.get("machine", {})
    model = results.get("model", {})
    lines = [
        f"- machine: {machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), torch {machine.get('torch')} "
        f"with {machine.get('torch_threads')} threads, transformers {machine.get('transformers')}, "
        f"{machine.get('date')}",
        f"- model: {model.get('note')}" + (f"; {model.get('vision')}, {model.get('parameters_m')}M parameters; "
                                           f"tokenizer: {model.get('tokenizer', {}).get('kind')}"
                                           if "vision" in model else ""),
    ]
    loads = [x for s in results.get("sizes", {}).values() for x in s.get("loadavg_1min_per_rep", [])]
    if loads:
        lines.append(f"- load average (1 min) at the start of each rep: {min(loads):.2f}-{max(loads):.2f} on "
                     f"{machine.get('cpu_count')} CPUs (above ~{machine.get('cpu_count')}: other processes were "
                     "competing, and a measure with more threads, like (d), gets a larger share than (e))")
    latency = results.get("latency")
    if latency:
        lines.append(
            f"- (f) latency at {latency['achieved_rate']:.2f} events/s (half of (d)), {latency['events']} events: "
            f"p50 {latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms (max {latency['max_ms']:.0f} ms)"
        )
    else:
        lines.append("- (f) latency: not measured" + (" (failed)" if "f" in results.get("failures", {}) else ""))
    intake = results.get("intake")
    if intake:
        summary = intake["summary"]
        lines.append(
            f"- (g) intake: {summary['median']:,.0f} events/s polled + parsed by one consumer "
            f"({intake['events']:,} events of {intake['mean_bytes']} B; reps {summary['reps']}); "
            f"produce {intake['produce_per_s']:,.0f}/s; CRC: {intake['crc']['implementation']}"
        )
    int8 = results.get("int8", {})
    if not int8.get("supported"):
        lines.append(f"- int8: not measured: {int8.get('why')}")
    lines.append(
        f"- peak RSS {results.get('peak_rss_mb')} MB for the whole benchmark process (it also holds the baselines' "
        f"model copy); {results.get('rss_after_moderator_mb')} MB right after build_moderator"
    )
    return lines
