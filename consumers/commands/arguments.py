"""Value types for options several command groups share; a bad value is argparse's usage error (exit 2)."""

from __future__ import annotations

import argparse
from datetime import datetime


def since(text: str) -> datetime:
    """argparse type for --since: a bad value is a usage error (exit 2), not a traceback."""
    from moderation.timespec import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
