"""consumers: the Kafka runtime around the `moderation` library: the worker process, its wiring and the CLI."""
