"""`moderation run`: one worker, until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from consumers.errors import ExitCode
from consumers.settings import Settings
from moderation import __version__


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.signals import install_stop_signals

    stop = threading.Event()
    install_stop_signals(stop)  # first: a SIGTERM while torch and the model load is a clean stop
    import structlog

    from consumers.service import run_worker

    structlog.get_logger("moderation").info("starting", version=__version__, settings=settings.masked())
    run_worker(settings, stop)
    return ExitCode.OK


def register(commands: Any) -> None:
    run = commands.add_parser("run", help="run a worker: consume events, write verdicts, publish flagged items")
    run.set_defaults(handler=cmd_run)
