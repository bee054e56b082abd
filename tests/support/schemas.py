"""Validating messages against the published JSON Schemas (schemas/*.json), with formats checked.

jsonschema checks `date-time` only when the optional rfc3339-validator is installed, and skips it silently
otherwise; the checker here brings its own RFC 3339 test so a naive or malformed timestamp always fails.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from moderation.schemas import load_schema

# RFC 3339 section 5.6: full-date "T" full-time, seconds required, an offset (Z or +hh:mm) required.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)

FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True  # formats apply to strings only; `type` says the rest
    if not _RFC3339.match(instance):
        return False
    datetime.fromisoformat(instance.upper().replace("Z", "+00:00"))  # a real date and time, or ValueError
    return True


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name), format_checker=FORMATS)


def problems(name: str, instance: Any) -> list[str]:
    """What is wrong with `instance` as message `name`: empty when it validates."""
    return [f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
            for error in validator(name).iter_errors(instance)]


def assert_valid(name: str, instance: Any) -> None:
    found = problems(name, instance)
    assert not found, f"{name}: {found}"


def headers_object(headers: list[tuple[str, bytes | None]]) -> dict[str, str]:
    """A record's headers as the schema sees them: name -> UTF-8 text (the dlq.* names occur once)."""
    names = [name for name, _ in headers if name.startswith("dlq.")]
    assert len(names) == len(set(names)), f"repeated dead-letter headers: {names}"
    return {name: (value or b"").decode() for name, value in headers}
