"""`moderation search`: the stored verdicts whose images are nearest to a text, an image file, or a stored
item ("more like this"), with filters on time, source and verdict; the index is built in this process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.commands.arguments import since
from consumers.commands.checkpoint import LazyScorer, by_model, model_ids
from consumers.errors import CommandError, ExitCode
from consumers.settings import Settings

if TYPE_CHECKING:
    import numpy as np

    from moderation.clip_scorer import ClipScorer
    from moderation.search import Hit, SearchIndex


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.search import ExactIndex, FaissIndex, Filters, SearchIndex
    from moderation.storage import EmbeddingStore, open_engine

    kinds = [kind for kind in (args.text, args.image, args.like) if kind is not None]
    if len(kinds) != 1:
        raise CommandError.user('give exactly one query: "TEXT", --image FILE or --like CONTENT_OR_EVENT_ID')
    if args.k < 1:
        raise CommandError.user(f"-k must be at least 1, not {args.k}")
    image = _read_image(args.image) if args.image is not None else None
    scorer = LazyScorer(settings, args.model).get()
    filters = Filters(
        since=args.since, until=args.until, sources=tuple(args.source or ()), flagged=args.flagged,
        actions=tuple(args.action or ()), categories=tuple(args.category or ()),
    )
    with open_engine(settings.database_url) as engine:
        index = SearchIndex(engine, scorer.stored_model_ids, ExactIndex if args.exact else FaissIndex)
        vector = _query(args, scorer, index, image)
        index.build(progress=_progress)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        if index.size == 0:
            coverage = EmbeddingStore(engine).coverage()
            raise CommandError(
                f"no stored embeddings to search for {model_ids(scorer)}"
                + (f". Stored by model id: {by_model(coverage)}" if coverage else ": the database has no verdicts")
            )
        hits = index.search(vector, args.k, filters)
    if args.json:
        print(json.dumps([_as_json(rank, hit) for rank, hit in enumerate(hits, 1)], indent=2))
    else:
        _print_table(hits)
    return ExitCode.OK


def _read_image(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError.user(f"cannot read image {path}: {exc.strerror or exc}") from None


def _query(args: argparse.Namespace, scorer: ClipScorer, index: SearchIndex, image: bytes | None) -> np.ndarray:
    from moderation.exceptions import ImageLoadError
    from moderation.search.queries import image_vector, text_vector

    if args.text is not None:
        if not args.text.strip():
            raise CommandError.user("the search text is empty")
        return text_vector(scorer, args.text)
    if image is not None:
        try:
            return image_vector(scorer, image)
        except ImageLoadError as exc:
            raise CommandError.user(f"cannot use image {args.image}: {exc.reason}: {exc.detail}") from None
    vector = index.like(args.like)
    if vector is None:
        raise CommandError.user(
            f"no stored embedding for event or content id {args.like!r} under {model_ids(scorer)}"
        )
    return vector


def _progress(count: int) -> None:
    end = "\r" if sys.stderr.isatty() else "\n"
    print(f"building the search index: {count:,} embeddings", end=end, file=sys.stderr, flush=True)


def _as_json(rank: int, hit: Hit) -> dict[str, Any]:
    row = hit.row
    return {
        "rank": rank, "score": round(hit.score, 4), "content_id": row.content_id, "event_id": row.event_id,
        "source": row.source, "flagged": row.flagged, "action": row.action, "category": row.top_category,
        "created_at": row.created_at.isoformat(),
    }


def _print_table(hits: list[Hit]) -> None:
    if not hits:
        print("no matches")
        return
    header = ("rank", "score", "content id", "event id", "source", "action", "category", "created")
    rows = [
        (str(rank), f"{hit.score:.3f}", hit.row.content_id, hit.row.event_id, hit.row.source,
         hit.row.action or "-", hit.row.top_category or "-", hit.row.created_at.isoformat(timespec="seconds"))
        for rank, hit in enumerate(hits, 1)
    ]
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]
    for line in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def register(commands: Any) -> None:
    search = commands.add_parser("search", help="find stored images by text, by an image, or like a stored item")
    search.add_argument("text", nargs="?", default=None, help="what the images show, e.g. \"a red picture\"")
    search.add_argument("--image", type=Path, default=None, metavar="FILE", help="images like this file")
    search.add_argument("--like", default=None, metavar="ID", help="images like this stored event or content id")
    search.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    search.add_argument("--since", type=since, default=None, help="created at or after (30m, 12h, 7d, or ISO)")
    search.add_argument("--until", type=since, default=None, help="created before (30m, 12h, 7d, or ISO)")
    search.add_argument("--source", action="append", help="only events from this source (repeatable)")
    flagged = search.add_mutually_exclusive_group()
    flagged.add_argument("--flagged", dest="flagged", action="store_const", const=True, default=None,
                         help="only flagged verdicts")
    flagged.add_argument("--not-flagged", dest="flagged", action="store_const", const=False,
                         help="only verdicts not flagged")
    search.add_argument("--category", action="append", help="only verdicts with this top category (repeatable)")
    search.add_argument("--action", action="append", help="only verdicts with this action (repeatable)")
    search.add_argument("--model", default=None, help="checkpoint (default: the configured one)")
    search.add_argument("--exact", action="store_true", help="scan every embedding exactly (no approximate index)")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    search.set_defaults(handler=cmd_search)
