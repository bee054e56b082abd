"""Audit sampling: which allowed images go to review anyway, drawn from the event_id alone.

A random sample of what the policy lets through is the only way to measure what it misses (AWS A2I's
random sampling for audits). The draw is a hash, not a random number generator, so a redelivered event
is drawn the same way on any worker, and the sample does not shift when a policy edit changes the rate
of unrelated events: raising the rate from 1% to 2% keeps the first 1% and adds to it.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def audit_fraction(event_id: str) -> float:
    """A uniform value in [0, 1) fixed by `event_id`."""
    digest = hashlib.sha256(b"moderation-audit:" + event_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def audit_draw(event_id: str, rate: float) -> bool:
    """Whether the event with `event_id` is in an audit sample of `rate` (0 never, 1 always)."""
    return rate > 0.0 and audit_fraction(event_id) < rate
