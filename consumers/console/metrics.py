"""Prometheus metrics of the review console: requests, decisions, and the queues as people see them.

Queue depth and oldest-pending age are read from the database when Prometheus scrapes (a collector),
so every console replica reports the same, true numbers, whoever made the decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

PendingCounts = Callable[[], dict[str, tuple[int, datetime | None]]]


class _QueueCollector(Collector):
    def __init__(self, pending: PendingCounts) -> None:
        self._pending = pending

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("moderation_review_queue_depth", "Review items waiting, per queue.", labels=["queue"])
        oldest = GaugeMetricFamily(
            "moderation_review_oldest_pending_seconds", "Age of the oldest waiting item, per queue.", labels=["queue"]
        )
        try:
            counts = self._pending()
        except Exception:  # noqa: BLE001 - a scrape during a database outage reports nothing, not an error page
            counts = {}
        now = datetime.now(timezone.utc)
        for queue, (n, entered) in sorted(counts.items()):
            depth.add_metric([queue], n)
            oldest.add_metric([queue], (now - entered).total_seconds() if entered else 0.0)
        yield depth
        yield oldest


class ConsoleMetrics:
    def __init__(self, pending: PendingCounts | None = None, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.requests = Counter(
            "moderation_console_requests", "Console HTTP requests.", ["method", "route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "moderation_console_request_seconds", "Console request time.", ["route"], buckets=_BUCKETS, registry=r
        )
        self.decisions = Counter(
            "moderation_review_decisions", "Review decisions made in the console.", ["kind", "outcome"], registry=r
        )
        self.published = Counter(
            "moderation_review_decisions_published", "Decisions acknowledged on the decisions topic.", registry=r
        )
        if pending is not None:
            r.register(_QueueCollector(pending))

    def watch_search(self, size: Callable[[], int]) -> None:
        """Report the search index's size (0 while it builds or when search is unavailable)."""
        gauge = Gauge("moderation_search_index_embeddings", "Embeddings in the console's search index.",
                      registry=self.registry)
        gauge.set_function(lambda: float(size()))

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def decided(self, kind: str, outcome: str, n: int = 1) -> None:
        self.decisions.labels(kind, outcome).inc(n)
