"""Stop signals for long-running commands, in a module light enough to install before the heavy imports.

A SIGTERM that arrives while the model is still loading must be a clean stop request, not the default
action (death by signal): so the handler is the first thing a command installs.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import structlog

log = structlog.get_logger("moderation.signals")


def install_stop_signals(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: finish the batch in flight, commit, leave. A second one: exit at once."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("second signal, exiting without finishing the batch", signal=signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("stopping after the batch in flight", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
