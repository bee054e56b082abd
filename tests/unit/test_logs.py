"""Logs: in json mode every line on the stream is one JSON object, whoever wrote it.

Three writers share stderr: structlog events (the worker's own), stdlib `logging` records (the library's
modules, Pillow, kafka-python) and Python warnings (Pillow's UserWarnings). Each test configures logging
in a fresh interpreter, as `moderation` does at start-up, so the test process' own logging is untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

from tests.support.paths import REPO

EMIT = """
import logging, warnings
from io import BytesIO

import structlog
from PIL import Image

from consumers.logs import configure_logging

configure_logging({level!r}, {fmt!r})
structlog.contextvars.bind_contextvars(event_id="e-1", topic="images")
structlog.get_logger("moderation.worker").info("batch scored", size=3)
logging.getLogger("PIL.TiffImagePlugin").error("tag %d has an odd count", 296)
logging.getLogger("moderation.scorer").info("model loaded")
logging.getLogger("moderation.scorer").debug("not at INFO")
logging.getLogger("kafka.conn").warning("reconnecting: not at INFO")
logging.getLogger("some.library").info("third-party chatter: not at INFO")
warnings.warn("a library's warning", UserWarning)
buffer = BytesIO()
Image.new("1", (10_000, 9_000)).save(buffer, "PNG")
Image.open(BytesIO(buffer.getvalue()))  # Pillow's own DecompressionBombWarning, through `warnings`
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("moderation.moderator").exception("stdlib with a traceback")
    structlog.get_logger("moderation.delivery").error("structlog with a traceback", exc_info=True)
structlog.contextvars.clear_contextvars()
logging.getLogger("moderation.reuse").warning("no context bound")
"""


def emitted(level: str, fmt: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(EMIT.format(level=level, fmt=fmt))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # logs go to stderr only
    return [line for line in result.stderr.splitlines() if line.strip()]


def by_event(records: list[dict[str, Any]], text: str) -> dict[str, Any]:
    [record] = [r for r in records if text in r["event"]]
    return record


def test_json_mode_writes_only_json_objects() -> None:
    lines = emitted("INFO", "json")
    records = [json.loads(line) for line in lines]  # fails on any plain-text line
    assert all(isinstance(r, dict) for r in records)
    for record in records:
        assert {"level", "event", "logger", "timestamp"} <= record.keys(), record
    assert len(records) == 8


def test_json_mode_keeps_each_writers_level_logger_and_context() -> None:
    records = [json.loads(line) for line in emitted("INFO", "json")]
    structlog_event = by_event(records, "batch scored")
    assert (structlog_event["level"], structlog_event["logger"], structlog_event["size"]) == (
        "info",
        "moderation.worker",
        3,
    )
    pillow = by_event(records, "odd count")
    assert (pillow["level"], pillow["logger"]) == ("error", "PIL.TiffImagePlugin")
    assert pillow["event"] == "tag 296 has an odd count"  # %-style arguments applied
    assert by_event(records, "model loaded")["level"] == "info"  # the library's own INFO, at INFO
    for record in (structlog_event, pillow):  # the context bound by the worker, on every writer's lines
        assert (record["event_id"], record["topic"]) == ("e-1", "images")
    assert "event_id" not in by_event(records, "no context bound")

    warned = by_event(records, "a library's warning")
    assert (warned["level"], warned["logger"]) == ("warning", "py.warnings")
    assert warned["event"].endswith(": UserWarning: a library's warning")  # one line: no trailing newline
    bomb = by_event(records, "DecompressionBombWarning")
    assert bomb["logger"] == "py.warnings"

    for text in ("stdlib with a traceback", "structlog with a traceback"):
        assert "ZeroDivisionError" in by_event(records, text)["exception"]


def test_levels_filter_every_writer() -> None:
    events = " ".join(json.loads(line)["event"] for line in emitted("INFO", "json"))
    for absent in ("not at INFO", "third-party chatter"):
        assert absent not in events
    debug = " ".join(json.loads(line)["event"] for line in emitted("DEBUG", "json"))
    assert "not at INFO" in debug  # the library's DEBUG and kafka-python's WARNING, at DEBUG
    assert "third-party chatter" not in debug  # other libraries stay at WARNING


def test_console_mode_renders_every_writer_alike() -> None:
    lines = emitted("INFO", "console")
    assert not any(line.lstrip().startswith("{") for line in lines)
    assert not any(line.startswith(("ERROR ", "WARNING ", "INFO ")) for line in lines)  # the old stdlib format
    pillow = next(line for line in lines if "odd count" in line)
    worker = next(line for line in lines if "batch scored" in line)
    for line in (pillow, worker):
        assert line[:4].isdigit()  # the ISO timestamp first, as structlog renders it
        assert "event_id=e-1" in line
    assert "[error" in pillow and "PIL.TiffImagePlugin" in pillow
    assert "[info" in worker and "size=3" in worker
