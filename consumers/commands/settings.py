"""`moderation settings`: the effective settings as JSON, secrets masked (what an operator checks first)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from consumers.errors import ExitCode
from consumers.settings import Settings


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.masked(), indent=2))
    return ExitCode.OK


def register(commands: Any) -> None:
    show = commands.add_parser("settings", help="print the effective settings, secrets masked")
    show.set_defaults(handler=cmd_settings)
