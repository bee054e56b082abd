"""The worker's pipeline, one module a step, data flowing one way:

    poll (loop.py) -> prepare (prepare.py, loader pool) -> score (score.py, scorer thread; policies.py
      checks the policy files first) -> deliver (deliver.py, delivery thread: consumers/delivery.py's
      four steps) -> commit offsets (ledger.py, the consumer's thread)

What the stages hand each other is in items.py (and consumers/delivery.py's `ScoredBatch`), the threads
in stages.py, the rebalance drain in rebalance.py, the lag gauge in lag.py.
"""

from consumers.pipeline.loop import Worker, WorkerCrashed

__all__ = ["Worker", "WorkerCrashed"]
