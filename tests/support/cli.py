"""The `moderation` command as a real process: one-shot commands, and `moderation run` workers.

Workers get this test's topics and group through MODERATION_* variables, exactly as an operator
configures one, and log to a file (never a pipe: a chatty worker must not block on a full pipe).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.kafka import PipelineEnv, committed_total
from tests.support.paths import POLICY, REPO


def moderation(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 120) -> Any:
    """Run `moderation <args>` to completion; the CompletedProcess has text stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "consumers.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def worker_variables(env: PipelineEnv, database_url: str, test_model_dir: Path) -> dict[str, str]:
    """The environment a `moderation run` process needs to join this test's topics and group."""
    kafka = env.settings.kafka
    return {
        "MODERATION_DATABASE__URL": database_url,
        "MODERATION_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "MODERATION_KAFKA__INPUT_TOPIC": kafka.input_topic,
        "MODERATION_KAFKA__REVIEW_TOPIC": kafka.review_topic,
        "MODERATION_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
        "MODERATION_KAFKA__CONSUMER_GROUP": kafka.consumer_group,
        "MODERATION_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "MODERATION_BATCHING__MAX_SIZE": str(env.settings.batching.max_size),
        "MODERATION_MODEL__NAME_OR_PATH": str(test_model_dir),
        "MODERATION_MODEL__DEVICE": "cpu",
        "MODERATION_POLICY__PATH": str(POLICY),
        "MODERATION_LOG__FORMAT": "json",
        "MODERATION_OPS__HOST": "127.0.0.1",
        "MODERATION_OPS__PORT": "0",
        "MODERATION_IMAGES__FILE_ROOT": str(env.settings.images.file_root),
    }


def start_worker(variables: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """Start `moderation run` with `variables`; stdout and stderr are appended to `log`."""
    with log.open("a") as sink:  # a file, not a pipe: a chatty worker must never block on a full pipe
        return subprocess.Popen(
            [sys.executable, "-m", "consumers.cli", "run"],
            cwd=REPO,
            env={**os.environ, **variables},
            stdout=sink,
            stderr=sink,
            text=True,
        )


def drain_and_terminate(process: subprocess.Popen[str], env: PipelineEnv, produced: int, log: Path) -> None:
    """Wait until the group has committed every produced record, then SIGTERM the worker and reap it."""
    try:
        deadline = time.monotonic() + 120
        while committed_total(env.settings) < produced and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
