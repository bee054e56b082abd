"""One exception root for the library, so callers can catch everything we raise in one place."""

from __future__ import annotations


class ModerationError(Exception):
    """Root of every error raised on purpose by this project."""


class ConfigurationError(ModerationError):
    """A setting or a file the operator supplied cannot be used."""


class PolicyError(ConfigurationError):
    """A policy file is invalid; the message names the file, the field and the problem."""

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{path}: {field}: {problem}" for field, problem in problems]
        super().__init__("invalid policy\n  " + "\n  ".join(lines))


class ModelNotFoundError(ConfigurationError):
    """The CLIP checkpoint is neither a local directory nor in the local Hugging Face cache."""


class EventError(ModerationError):
    """An event cannot be understood; it goes to the dead-letter topic with `reason` and `detail`."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class ImageLoadError(ModerationError):
    """An image cannot be fetched or decoded; its event gets an `error` verdict with this reason."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")
