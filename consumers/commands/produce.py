"""`moderation produce`: one image event per local file, what an upload service would send (for trials)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from consumers.errors import ExitCode
from consumers.settings import Settings


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.producer import produce_image_files

    count = produce_image_files(settings, args.images, source=args.source, inline=args.inline)
    print(f"produced {count} events to {settings.kafka.input_topic} at {settings.kafka.bootstrap_servers}")
    return ExitCode.OK


def register(commands: Any) -> None:
    produce = commands.add_parser("produce", help="produce one image event per local image file")
    produce.add_argument("images", nargs="+", type=Path, help="image files")
    produce.add_argument("--source", default="cli", help="the event's source / tenant (default: cli)")
    produce.add_argument("--inline", action="store_true", help="embed the bytes as base64 instead of a file:// URL")
    produce.set_defaults(handler=cmd_produce)
