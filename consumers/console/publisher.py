"""Publishing review decisions to the decisions topic from the database's outbox, at least once.

A decision commits to the database first (with its audit row and reviewer outcome); its message goes
out afterwards, from the rows whose `published_at` is still empty. So a broker outage never loses or
blocks a decision: the reviewer goes on, and the outbox drains once the broker is back. A crash between
the broker's acknowledgement and the `published_at` update sends a message again, with the same
`decision_id`: upload services deduplicate on it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import structlog
from kafka import KafkaProducer
from kafka.errors import KafkaError

from consumers.messages import OutgoingMessage
from consumers.publishing import publish
from moderation.review.decision_message import decision_payload
from moderation.storage import StorageError
from moderation.storage.review_queue import ReviewQueue

log = structlog.get_logger("moderation.console")

IDLE_CHECK_S = 5.0  # the outbox is looked at this often even when no decision woke the publisher
BATCH = 200


class DecisionPublisher:
    """A thread that drains the outbox whenever `notify()` says a decision was made, and every few seconds."""

    def __init__(
        self,
        queue: ReviewQueue,
        make_producer: Callable[[], KafkaProducer],
        topic: str,
        on_published: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._queue = queue
        self._make_producer = make_producer
        self._producer: KafkaProducer | None = None
        self.topic = topic
        self._on_published = on_published
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-publisher", daemon=True)
        self.last_error: str | None = None

    def start(self) -> DecisionPublisher:
        self._thread.start()
        return self

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._producer is not None:
            self._producer.close(timeout=timeout_s)

    def publish_pending(self) -> int:
        """Send every unpublished decision, wait for the acknowledgements, record them; how many went out."""
        sent = 0
        while True:
            pending = self._queue.unpublished(BATCH)
            if not pending:
                return sent
            if self._producer is None:
                self._producer = self._make_producer()
            messages = [
                OutgoingMessage(
                    topic=self.topic,
                    key=decision.content_id.encode(),
                    value=json.dumps(
                        decision_payload(decision, source=source, policy_version=version), separators=(",", ":")
                    ).encode(),
                    headers=[("decision_id", decision.decision_id.encode()), ("content-type", b"application/json")],
                )
                for decision, source, version in pending
            ]
            publish(self._producer, messages)
            self._queue.mark_published([decision.decision_id for decision, _, _ in pending])
            sent += len(pending)
            self._on_published(len(pending))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(IDLE_CHECK_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.publish_pending()
                self.last_error = None
            except (KafkaError, StorageError) as exc:  # a broker not there at all is a KafkaError too
                self.last_error = str(exc)
                log.warning("decisions not published yet; retrying", error=str(exc), retry_in_s=IDLE_CHECK_S)
                if isinstance(exc, KafkaError) and self._producer is not None:
                    producer, self._producer = self._producer, None
                    threading.Thread(target=producer.close, kwargs={"timeout": 1}, daemon=True).start()
