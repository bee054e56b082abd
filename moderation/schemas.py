"""The JSON Schemas of every message this project reads or writes: the published contract, kept as data.

The files live in `schemas/` at the top of the repository (hand-written, one per message and version)
and ship in the wheel as `moderation.message_schemas`, so tests, tools and an HTTP API's OpenAPI document
load the same text the README links to. This module only reads them: validating needs `jsonschema`,
which the runtime does not depend on.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Any

import moderation

# Message name -> what it is; the file of version N is schemas/<name>.v<N>.json.
MESSAGES = {
    "image-event": "image event (input topic)",
    "review-message": "review message (review topic)",
    "dead-letter-headers": "dead-letter headers (dead-letter topic)",
    "review-outcome": "review outcome (review-outcomes topic)",
    "decision": "decision message (decisions topic)",
}


def schema_dir() -> Path:
    """`schemas/` beside the package in a source checkout, else the installed `moderation.message_schemas`.

    The checkout comes first: an editable install maps package names at install time, so a schema added
    since then would be missing from the mapped package.
    """
    checkout = Path(moderation.__file__).resolve().parent.parent / "schemas"
    if (checkout / "image-event.v1.json").is_file():
        return checkout
    spec = importlib.util.find_spec("moderation.message_schemas")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"message schemas not found: neither {checkout} nor moderation.message_schemas")
    return Path(spec.origin).parent


def schema_path(name: str, version: int = 1) -> Path:
    if name not in MESSAGES:
        raise KeyError(f"no schema {name!r}; the messages are {', '.join(MESSAGES)}")
    return schema_dir() / f"{name}.v{version}.json"


@cache
def _load(name: str, version: int) -> str:
    return schema_path(name, version).read_text(encoding="utf-8")


def load_schema(name: str, version: int = 1) -> dict[str, Any]:
    """The schema of message `name` (a key of `MESSAGES`) at `version`, as a fresh dict."""
    schema: dict[str, Any] = json.loads(_load(name, version))
    return schema
