"""The policy lifecycle of a running worker, in one owner: watch the files, hand the moderator new books.

`PolicyFiles` (moderation/policy_book.py) says what changed on disk; this decides when to look (before
each batch, and on the scorer's idle timer so an idle worker notices edits too), gives the moderator
each new book with `use_policies` (which computes its text embeddings first), and keeps what operators
see: refused edits (in /readyz and a gauge, until a later edit of the same file applies) and reloads
(metrics, log lines). The moderator only ever receives a book; it never reads a file.
"""

from __future__ import annotations

import structlog

from consumers.metrics import WorkerMetrics
from moderation.exceptions import PolicyError
from moderation.moderator import Moderator
from moderation.policy_book import PolicyBook, PolicyFiles

log = structlog.get_logger("moderation.worker")


class PolicyRuntime:
    """The policy files behind one moderator (None: policies given as objects, nothing to watch)."""

    def __init__(self, files: PolicyFiles | None, moderator: Moderator, metrics: WorkerMetrics) -> None:
        self.files = files
        self.moderator = moderator
        self.metrics = metrics
        self._refused: dict[str, PolicyError] = {}  # path -> why its latest edit was refused
        if files is not None and _identity(files.book) != _identity(moderator.policies):
            # A moderator built earlier from these files, which changed since: start from what they say.
            log.info("policy files changed since the moderator was built; using them", policy=files.book.default.path)
            moderator.use_policies(files.book)

    @property
    def interval_s(self) -> float:
        """How often the files are checked; 0: never."""
        return self.files.interval_s if self.files is not None else 0.0

    @property
    def refused(self) -> dict[str, PolicyError]:
        """Files whose latest edit was refused (path -> why): a copy, safe to read from any thread."""
        return dict(self._refused)

    def check(self) -> None:
        """On the scorer thread, before each batch and while idle: apply edited policy files; a broken edit
        is refused and logged, the last good version stays in force."""
        if self.files is None:
            return
        report = self.files.check()
        if report.applied:
            self.moderator.use_policies(self.files.book)
        for policy in report.applied:
            self._refused.pop(policy.path, None)
            log.info(
                "policy reloaded", policy=policy.path, policy_version=policy.version, policy_hash=policy.sha256[:12]
            )
        for error in report.refused:
            self._refused[error.path] = error
            log.error(
                "policy edit refused, the last good version stays in force",
                policy=error.path, problems=[f"{field}: {problem}" for field, problem in error.problems],
            )
        for path in report.restored:
            if self._refused.pop(path, None) is not None:
                log.info("policy file restored to the version in force", policy=path)
        self.metrics.policies_checked(report, self.moderator.policies, len(self._refused))


def _identity(book: PolicyBook) -> tuple[object, ...]:
    """What a book decides with: each policy's file and meaning, by role."""
    return (
        (book.default.path, book.default.sha256),
        tuple(sorted((source, p.path, p.sha256) for source, p in book.by_source.items())),
        tuple((p.path, p.sha256) for p in book.shadows),
    )
