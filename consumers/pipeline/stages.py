"""The pipeline's stage threads and what they share: an inbox each, the stop sentinel, the first failure.

A stage takes items from its inbox one at a time and hands what it makes downstream. Anything a stage
raises stops the whole worker (`Supervisor`): from then on every stage drops its work, so nothing after
the failure is committed, and the poll loop raises. Retrying is a stage's own business (delivery
retries database and broker errors itself); what escapes a stage is, by definition, not retryable.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import structlog

from consumers.metrics import WorkerMetrics

log = structlog.get_logger("moderation.worker")

In = TypeVar("In")
Out = TypeVar("Out")
_STOP = object()  # inbox sentinel: everything before it is done, then the stage ends


class Supervisor:
    """The first failure of any stage, and the flag that tells every stage to give up."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.abandon = threading.Event()  # set on a fatal error or a drain given up: stages drop their work
        self.failure: BaseException | None = None

    def run(self, work: Callable[..., Out], *args: object) -> Out | None:
        """`work(*args)`, or None after recording why it failed (the worker then stops)."""
        try:
            return work(*args)
        except BaseException as exc:  # noqa: BLE001 - any surprise here must stop the worker, not hang it
            log.error("pipeline stage failed", stage=threading.current_thread().name, error=repr(exc))
            self.metrics.error(exc)
            self.failure = exc
            self.abandon.set()
            return None


class Stage(Generic[In, Out]):
    """One stage on its own daemon thread: `work` on each item of its inbox, `emit` on each result (None:
    nothing to pass on), and `idle` whenever no item came for `idle_every_s` (None: wait for ever)."""

    def __init__(
        self,
        name: str,
        work: Callable[[In], Out | None],
        emit: Callable[[Out], None],
        supervisor: Supervisor,
        *,
        then: Stage[Any, Any] | None = None,
        idle: Callable[[], None] | None = None,
        idle_every_s: float | None = None,
    ) -> None:
        self.work = work
        self.emit = emit
        self.supervisor = supervisor
        self.then = then  # the stage downstream, told to stop once this one has finished
        self.idle = idle
        self.idle_every_s = idle_every_s if idle is not None and idle_every_s else None
        self._inbox: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, item: In) -> None:
        self._inbox.put(item)

    def stop(self) -> None:
        """Finish what is in the inbox (unless the worker gives up), then end (and the stages after it)."""
        self._inbox.put(_STOP)

    def join(self, timeout_s: float) -> None:
        # Once given up on, a stage may sit in a database or broker call: then it is left behind.
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        abandon = self.supervisor.abandon
        while True:
            try:
                item = self._inbox.get(timeout=self.idle_every_s)
            except queue.Empty:
                if not abandon.is_set() and self.idle is not None:
                    self.supervisor.run(self.idle)
                continue
            if item is _STOP:
                if self.then is not None:
                    self.then.stop()  # pass the stop on once everything before it is done here
                return
            if abandon.is_set():
                continue
            made = self.supervisor.run(self.work, item)
            if made is not None:
                self.emit(made)
