"""`moderation test-model build`: the small offline CLIP the demo and the tests score with."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from consumers.errors import ExitCode
from consumers.settings import Settings


def cmd_build(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.testmodel import build_test_model

    path = build_test_model(args.out, force=args.force, progress=lambda line: print(line, file=sys.stderr))
    print(path)
    return ExitCode.OK


def register(commands: Any) -> None:
    test_model = commands.add_parser("test-model", help="the small offline test CLIP model")
    test_model_commands = test_model.add_subparsers(dest="test_model_command", required=True, metavar="SUBCOMMAND")
    build = test_model_commands.add_parser("build", help="build it (or find the cached build) and print its path")
    build.add_argument("--out", type=Path, default=None, help="directory (default: the user cache)")
    build.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    build.set_defaults(handler=cmd_build)
