"""`moderation demo`: the end-to-end offline demo (`consumers.demo`), from one command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from consumers.settings import Settings


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.demo import run_demo

    return run_demo(settings, model=args.model, policy=args.policy)


def register(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="start an embedded broker, moderate sample images end to end, print the verdicts"
    )
    demo.add_argument("--model", default=None, help="a real CLIP checkpoint (directory or cached hub id)")
    demo.add_argument("--policy", type=Path, default=None, help="policy file (default: depends on the model)")
    demo.set_defaults(handler=cmd_demo)
