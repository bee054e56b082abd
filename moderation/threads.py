"""A thread pool whose threads never hold the process up.

`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit, so one thread stuck in a
read (a file that never ends, a database connect that never answers) keeps a stopping worker alive past
any deadline. `DaemonPool` runs the same kind of work on daemon threads: at exit whatever they are doing
is abandoned, which is right for work whose results are only used if they arrive in time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_Task = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class DaemonPool:
    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError("a pool needs at least one thread")
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._closed:
            raise RuntimeError("the pool is shut down")
        future: Future[T] = Future()
        self._tasks.put((future, fn, args))
        return future

    def shutdown(self, wait_s: float = 0.0) -> None:
        """Cancel what has not started, stop the idle threads; wait at most `wait_s` for busy ones."""
        self._closed = True
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join(timeout=wait_s)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
