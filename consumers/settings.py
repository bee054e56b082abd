"""A process's settings, read once at start-up from the environment (prefix ``MODERATION_``) and ``.env``.

The groups only the runtime reads live here (Kafka, in kafka-python's vocabulary; batching; ops; logs);
the library's own groups (moderation/settings.py) nest in the same `Settings`. Groups nest with a double
underscore: ``MODERATION_KAFKA__BOOTSTRAP_SERVERS``, ``MODERATION_BATCHING__MAX_SIZE``. Secrets are
`SecretStr` and `masked()` hides them (and the password inside a database URL) so the effective settings
can be printed and logged safely.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from dotenv import dotenv_values
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from moderation.exceptions import ConfigurationError
from moderation.policy import CategoryName
from moderation.settings import (
    MASK,
    DatabaseSettings,
    EmbeddingSettings,
    ImageSettings,
    MediaSettings,
    ModelSettings,
    PolicySettings,
    SettingsGroup,
    mask_url,
)


class KafkaSettings(SettingsGroup):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    input_topic: str = Field("images.uploaded", description="Topic the upload services produce events to.")
    review_topic: str = Field("moderation.review", description="Flagged items for human reviewers.")
    dead_letter_topic: str = Field("images.uploaded.dlq", description="Events that cannot be understood.")
    review_outcomes_topic: str = Field(
        "moderation.review.outcomes", description="Reviewers' decisions (confirmed / overturned flags)."
    )
    decisions_topic: str = Field(
        "moderation.decisions", description="Review console decisions, for upload services to take down or restore."
    )
    consumer_group: str = Field("moderation", description="Kafka consumer group of the worker fleet.")
    delivery_mode: Literal["at_least_once", "transactional"] = Field(
        "at_least_once",
        description="transactional: review and dead-letter messages and the batch's offsets in one Kafka transaction.",
    )
    transactional_id_prefix: str = Field(
        "moderation", description="Transactional mode: each producer's transactional.id starts with this."
    )
    client_id: str = Field("moderation", description="Client id sent to the brokers (shows in broker logs).")
    session_timeout_ms: int = Field(10_000, ge=1_000, description="Group session timeout.")
    bootstrap_timeout_ms: int = Field(
        30_000, ge=100, le=600_000,
        description="How long a client waits for the first broker before the command fails with one line.",
    )
    max_poll_interval_ms: int = Field(300_000, ge=10_000, description="Longest allowed gap between polls.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None

    def client_options(self) -> dict[str, Any]:
        """Options shared by the consumer and the producers, in kafka-python's vocabulary."""
        options: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
        }
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile:
            options["ssl_cafile"] = str(self.ssl_cafile)
        return options


class BatchingSettings(SettingsGroup):
    max_size: int = Field(32, ge=1, le=4096, description="Largest batch scored in one forward pass.")
    max_wait_ms: int = Field(200, ge=0, description="A batch closes this long after its first event, even if not full.")
    loader_threads: int = Field(
        0, ge=0, le=256, description="Threads fetching and decoding images; 0 = twice the CPU cores."
    )
    max_batches_in_flight: int = Field(
        3, ge=1, le=64, description="Batches loading, scoring or persisting at once; beyond it partitions pause."
    )
    drain_timeout_s: float = Field(
        120.0, gt=0, le=3600,
        description="On SIGTERM or a rebalance, how long to wait for the batches in flight before giving up on them.",
    )


class OpsSettings(SettingsGroup):
    enabled: bool = Field(True, description="Serve /metrics, /healthz and /readyz from every worker.")
    host: str = Field("0.0.0.0", description="Address the ops HTTP server binds (all interfaces in a pod).")  # noqa: S104
    port: int = Field(9108, ge=0, le=65535, description="Port of the ops HTTP server; 0 picks a free one.")
    liveness_timeout_s: float = Field(
        60.0, gt=0, description="/healthz fails when the consumer loop has not polled for this long."
    )


class ConsoleSettings(SettingsGroup):
    host: str = Field("127.0.0.1", description="Address `moderation console` binds (0.0.0.0 in a pod).")
    port: int = Field(8080, ge=0, le=65535, description="Port of the review console; 0 picks a free one.")
    ops_port: int = Field(
        9109, ge=0, le=65535, description="Port of the console's /metrics, /healthz and /readyz (not authenticated)."
    )
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="A login lasts this long.")
    claim_minutes: float = Field(
        10.0, gt=0, le=24 * 60, description="A claimed item returns to the queue this long after its claim."
    )
    trusted_proxies: str = Field(
        "", description="Comma-separated addresses or CIDRs of authenticating proxies whose identity header is trusted."
    )
    identity_header: str = Field(
        "X-Forwarded-User", description="The header naming the user, accepted only from a trusted proxy."
    )
    login_attempts_per_minute: int = Field(
        5, ge=1, le=1000, description="Failed logins allowed per minute for one name from one address."
    )
    search: bool = Field(
        True, description="Search over stored embeddings (loads the model's towers and builds an index at start)."
    )
    search_refresh_s: float = Field(
        30.0, ge=0, le=3600, description="A new verdict is searchable at most this many seconds after it is saved."
    )
    label_first: list[CategoryName] = Field(
        default_factory=list,
        description="Categories a head is being trained for: their uncertain items come first in the queue.",
    )


class LogSettings(SettingsGroup):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["console", "json"] = "console"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODERATION_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    data_dir: Path = Field(Path("data"), description="Where local state (the SQLite file, the reviewer copies) lives.")
    kafka: KafkaSettings = KafkaSettings()
    database: DatabaseSettings = DatabaseSettings()
    model: ModelSettings = ModelSettings()
    batching: BatchingSettings = BatchingSettings()
    policy: PolicySettings = PolicySettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    images: ImageSettings = ImageSettings()
    media: MediaSettings = MediaSettings()
    ops: OpsSettings = OpsSettings()
    console: ConsoleSettings = ConsoleSettings()
    log: LogSettings = LogSettings()

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def database_url(self) -> str:
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'moderation.db'}"

    @property
    def media_directory(self) -> Path:
        """Where the reviewer copies are kept: `media.directory`, else media/ in the data directory."""
        return self.media.directory if self.media.directory is not None else self.data_dir / "media"

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, with every secret replaced by a mask."""
        data = self.model_dump(mode="json")
        data["database"]["url"] = mask_url(self.database_url)
        if self.kafka.sasl_password is not None:
            data["kafka"]["sasl_password"] = MASK
        return data


def environment_variables(model: type[BaseModel] = Settings, prefix: str = "MODERATION_") -> list[str]:
    """Every environment variable that sets a field, e.g. ``MODERATION_KAFKA__BOOTSTRAP_SERVERS``.

    Derived from the model, so documentation and deployment files can be checked against it.
    """
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += environment_variables(annotation, f"{prefix}{name.upper()}__")
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


# --- reading the settings for a command: every mistake named, one line each ------------------------

# MODERATION_* variables read outside the settings model: the test suite's knobs and the test broker's
# binary (consumers/broker.py). Anything else with the prefix is a setting or a mistake.
_OTHER_VARIABLES = ("MODERATION_TEST_", "MODERATION_TANSU_BIN")


class InvalidSettingsError(ConfigurationError):
    """The environment or `.env` holds settings that cannot be used; `problems` has one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _settable(model: type[BaseModel] = Settings, prefix: str = "MODERATION_") -> dict[str, FieldInfo]:
    """Every variable that sets something, groups included (``MODERATION_KAFKA`` takes the group as JSON)."""
    found: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        found[variable] = field
        if _is_group(field):
            found |= _settable(field.annotation, f"{variable}__")  # type: ignore[arg-type]
    return found


def _is_group(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def _json_shape(field: FieldInfo) -> str | None:
    """'an object' or 'a list' where pydantic-settings decodes the variable as JSON; None for plain text."""
    origin = get_origin(field.annotation)
    if _is_group(field) or origin is dict:
        return "an object"
    if origin in (list, tuple, set, frozenset):
        return "a list"
    return None


def _json_example(field: FieldInfo) -> str:
    if field.examples:
        return json.dumps(field.examples[0])
    default = field.get_default(call_default_factory=True)
    if _is_group(field):
        first, inner = next(iter(field.annotation.model_fields.items()))  # type: ignore[union-attr]
        return json.dumps({first: inner.get_default(call_default_factory=True)}, default=str)
    if default:
        return json.dumps(list(default) if isinstance(default, (tuple, set, frozenset)) else default, default=str)
    return '{"key": "value"}' if get_origin(field.annotation) is dict else '["value"]'


def _is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr or SecretStr in get_args(field.annotation)


def _prefixed(values: Mapping[str, str | None]) -> dict[str, str]:
    """The MODERATION_* entries of `values`, names upper-cased as pydantic-settings matches them."""
    return {
        name.upper(): value or ""
        for name, value in values.items()
        if name.upper().startswith("MODERATION_") and not name.upper().startswith(_OTHER_VARIABLES)
    }


def _unknown(variable: str, known: Mapping[str, FieldInfo]) -> bool:
    if variable in known:
        return False
    # A dict setting also takes one key per variable: MODERATION_POLICY__SOURCES__KIDS-APP=x.yaml.
    return not any(variable.startswith(f"{name}__") and get_origin(f.annotation) is dict for name, f in known.items())


def _closest(variable: str) -> str:
    # Compared without the prefix every name shares, which would make any two names look alike.
    names = {name.removeprefix("MODERATION_"): name for name in environment_variables()}
    close = difflib.get_close_matches(variable.removeprefix("MODERATION_"), names, n=1, cutoff=0.6)
    if close:
        return f"did you mean {names[close[0]]}?"
    return "no setting has a similar name: the README's Settings table lists them"


def _variable_for(loc: tuple[int | str, ...], known: Mapping[str, FieldInfo]) -> tuple[str, str]:
    """A validation error's location as (the variable, what lies inside it: a key or an index)."""
    variable, rest = f"MODERATION_{str(loc[0]).upper()}", list(loc[1:])
    while rest and f"{variable}__{str(rest[0]).upper()}" in known:
        variable = f"{variable}__{str(rest.pop(0)).upper()}"
    return variable, "".join(f"[{part!r}]" for part in rest)


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """`Settings()` for a command, refusing what `Settings` alone would ignore or report obscurely.

    An unknown MODERATION_* name (in the environment or in `env_file`) is refused with the closest real
    one: a typo must not leave a worker on its defaults. A value that must be JSON is checked first, so
    the error names the variable and the expected shape; every invalid value is one line naming its
    variable. Raises `InvalidSettingsError` with all the problems found.
    """
    known = _settable()
    environment = _prefixed(os.environ)
    dot_env = _prefixed(dotenv_values(env_file)) if env_file is not None and Path(env_file).is_file() else {}
    given = {**dot_env, **environment}  # the environment wins, as in Settings

    def where(variable: str) -> str:
        return "" if variable in environment else f" in {env_file}"

    problems = [
        f"unknown setting {variable}{where(variable)} ({_closest(variable)})"
        for variable in sorted(given)
        if _unknown(variable, known)
    ]
    for variable in sorted(given):
        field = known.get(variable)
        shape = _json_shape(field) if field is not None else None
        if shape is None:
            continue
        try:
            json.loads(given[variable])
        except ValueError as exc:
            problems.append(
                f"{variable}{where(variable)}: not valid JSON (expected {shape} like {_json_example(field)}): {exc}"  # type: ignore[arg-type]
            )
    if problems:
        raise InvalidSettingsError(problems)
    try:
        return Settings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        for error in exc.errors():
            variable, inside = _variable_for(error["loc"], known)
            value = error.get("input")
            secret = variable in known and _is_secret(known[variable])
            got = f" (got {value[:80]!r})" if isinstance(value, str) and not secret and not inside else ""
            problems.append(f"{variable}{where(variable)}{inside}: {error['msg']}{got}")
        raise InvalidSettingsError(problems) from exc
    except PydanticSettingsError as exc:  # a value pydantic-settings could not decode before validating
        raise InvalidSettingsError([f"{exc}: {exc.__cause__}" if exc.__cause__ else str(exc)]) from exc
