"""The worker's entry point: `Worker` runs one consumer-group member (the pipeline is consumers/pipeline/)."""

from consumers.pipeline import Worker, WorkerCrashed

__all__ = ["Worker", "WorkerCrashed"]
