"""moderation: score uploaded images with CLIP against YAML policies and record one verdict per image.

This package is the library: settings, the event contract, policies, image loading, scoring, the
decision and storage. It knows nothing about Kafka; `consumers` wires a Kafka consumer group to it.
"""

__version__ = "0.1.0"
