"""The ops HTTP server of a worker: /metrics for Prometheus, /healthz (liveness) and /readyz (readiness).

The server starts before the model loads. Liveness says the process is starting, then that the consumer
loop is not wedged (it polled recently); readiness says the worker can do its job: model and policy
loaded, database reachable, loop polling. Kubernetes restarts a worker that is not live and sends it no
traffic... of which a Kafka consumer has none, so readiness is for operators and rollouts: a worker that
is live but not ready is starting or waiting for the database. A member without partitions (more
replicas than partitions) is a ready standby.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], tuple[bool, str]]
# The checks a probe runs, asked for at each request: what is checked changes as the worker starts.
Checks = Callable[[], Mapping[str, Check]]


class CachedCheck:
    """Run an expensive check (a database ping) at most every `ttl_s`, so probes cannot hammer it."""

    def __init__(self, check: Check, ttl_s: float = 5.0) -> None:
        self._check = check
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._last: tuple[bool, str] = (False, "not checked yet")

    def __call__(self) -> tuple[bool, str]:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl_s:
                try:
                    self._last = self._check()
                except Exception as exc:  # noqa: BLE001 - a failing check is a result, not a crash
                    self._last = (False, f"{type(exc).__name__}: {exc}"[:300])
                self._at = time.monotonic()
            return self._last


class OpsServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        liveness: Mapping[str, Check] | Checks,
        readiness: Mapping[str, Check] | Checks,
    ) -> None:
        handler = _handler(registry, liveness, readiness)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,), name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def evaluate(checks: Mapping[str, Check]) -> tuple[bool, dict[str, dict[str, object]]]:
    results = {name: check() for name, check in checks.items()}
    body = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in results.items()}
    return all(ok for ok, _ in results.values()), body


def _handler(
    registry: CollectorRegistry, liveness: Mapping[str, Check] | Checks, readiness: Mapping[str, Check] | Checks
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - probes every few seconds
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                checks = liveness if path == "/healthz" else readiness
                ok, body = evaluate(checks() if callable(checks) else checks)
                payload = json.dumps({"ok": ok, "checks": body}).encode()
                self._send(200 if ok else 503, payload, "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
