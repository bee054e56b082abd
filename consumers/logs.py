"""Structured logs: readable console lines in development, one JSON object per line in production.

Three writers share the stream: structlog events (the worker's own), stdlib `logging` records (the
library's modules, Pillow, kafka-python) and Python warnings (Pillow's UserWarnings). All of them go
through one stdlib handler whose structlog `ProcessorFormatter` renders every line the same way, so a
log pipeline reading JSON never meets a plain-text line, and each carries the context bound with
`structlog.contextvars` (event id, topic, offset) when the line is written in that context.
"""

from __future__ import annotations

import logging
import sys

import structlog

# The packages whose stdlib loggers log at the configured level; everything else stays at WARNING.
_OWN_LOGGERS = ("moderation", "consumers")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler configure_logging installs, told apart so a second call replaces it."""


def _strip_message(logger: object, method: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """A warning's message ends with a newline (and its source line): one line per record instead."""
    if isinstance(event_dict.get("event"), str):
        event_dict["event"] = event_dict["event"].rstrip()
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    """Route structlog, stdlib logging and warnings to stderr, rendered as `fmt` (json or console)."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # Run for every line, whoever wrote it: structlog events before they reach the stdlib logger,
    # stdlib records and warnings in the formatter (foreign_pre_chain), in the writing thread either way,
    # so the contextvars are the ones bound where the line was written.
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = _Handler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, _strip_message],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries: warnings and errors only
    for name in _OWN_LOGGERS:  # structlog's events use these names too ("moderation.worker")
        logging.getLogger(name).setLevel(level)
    # kafka-python logs reconnects and rebalances at INFO/WARNING on the standard logging module.
    logging.getLogger("kafka").setLevel(logging.ERROR if level != "DEBUG" else logging.INFO)
    # Its connection manager logs every refused connection at ERROR while it retries (several a second
    # during a broker outage): the commands and the worker say once what is unreachable, and the metrics
    # count the failures, so these lines are kept for DEBUG.
    logging.getLogger("kafka.net").setLevel(logging.CRITICAL if level != "DEBUG" else logging.INFO)
    # Warnings become records of the "py.warnings" logger: rendered like the rest, not printed raw.
    logging.captureWarnings(True)
