"""The prepare stage, run in the loader pool as each record is polled: parse the event, load its image.

By the time a batch closes, most of its images are fetched, decoded and preprocessed, so the scorer
thread only scores. A record that breaks the event contract becomes its dead letter here.
"""

from __future__ import annotations

import structlog
from kafka.consumer.fetcher import ConsumerRecord

from consumers.dead_letters import dead_letter_for
from consumers.pipeline.items import Prepared, record_fields
from moderation.events import parse_event
from moderation.exceptions import EventError
from moderation.moderator import Moderator


class Prepare:
    def __init__(self, moderator: Moderator, dead_letter_topic: str) -> None:
        self.moderator = moderator
        self.dead_letter_topic = dead_letter_topic

    def __call__(self, record: ConsumerRecord) -> Prepared:
        # Every log line written while handling this record carries where it came from (and, once parsed,
        # which event it is), whatever module writes it.
        with structlog.contextvars.bound_contextvars(**record_fields(record)):
            try:
                event = parse_event(record.value)
            except EventError as exc:
                return Prepared(record, dead_letter=dead_letter_for(record, exc, self.dead_letter_topic))
            with structlog.contextvars.bound_contextvars(event_id=event.event_id, content_id=event.content_id):
                return Prepared(record, event, self.moderator.load_one(event))
