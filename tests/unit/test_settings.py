"""consumers/settings.py and moderation/settings.py.

Defaults, MODERATION_* environment, .env files, masking of secrets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from consumers.settings import BatchingSettings, InvalidSettingsError, KafkaSettings, Settings, load_settings
from moderation.settings import DatabaseSettings, ImageSettings, mask_url

MASK = "**********"
DB_PASSWORD = "s3cr3t-db-pa55"
SASL_PASSWORD = "sasl-pa55-w0rd"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MODERATION_* variable and no .env from the developer's shell or checkout leaks in."""
    for name in list(os.environ):
        if name.upper().startswith("MODERATION_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- defaults ---------------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = Settings()
    assert settings.data_dir == Path("data")
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.input_topic == "images.uploaded"
    assert settings.kafka.review_topic == "moderation.review"
    assert settings.kafka.dead_letter_topic == "images.uploaded.dlq"
    assert settings.kafka.consumer_group == "moderation"
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert settings.kafka.sasl_mechanism is None
    assert settings.kafka.sasl_password is None
    assert settings.database.url is None
    assert settings.model.name_or_path == "openai/clip-vit-base-patch32"
    assert settings.model.device == "auto"
    assert settings.batching.max_size == 32
    assert settings.batching.max_wait_ms == 200
    assert settings.policy.path == Path("policies/default.yaml")
    assert settings.images.max_bytes == 20 * 1024 * 1024
    assert settings.images.max_pixels == 64_000_000
    assert settings.images.fetch_timeout_s == 10.0
    assert settings.images.allow_http is True
    assert settings.images.allow_file is True
    assert settings.images.file_root is None
    assert settings.log.level == "INFO"
    assert settings.log.format == "console"


def test_default_database_url_is_sqlite_under_data_dir() -> None:
    assert Settings().database_url == "sqlite:///data/moderation.db"


def test_database_url_follows_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_DATA_DIR", str(tmp_path / "state"))
    assert Settings().database_url == f"sqlite:///{tmp_path}/state/moderation.db"


def test_data_dir_expands_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MODERATION_DATA_DIR", "~/mod-state")
    settings = Settings()
    assert settings.data_dir == tmp_path / "mod-state"
    assert settings.database_url == f"sqlite:///{tmp_path}/mod-state/moderation.db"


def test_explicit_database_url_wins() -> None:
    settings = Settings(database=DatabaseSettings(url=SecretStr("postgresql+psycopg://u:p@db/x")))
    assert settings.database_url == "postgresql+psycopg://u:p@db/x"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.data_dir = Path("/elsewhere")  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.kafka.input_topic = "other"  # type: ignore[misc]


# --- environment ------------------------------------------------------------------------------------


def test_environment_overrides_with_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("MODERATION_BATCHING__MAX_SIZE", "8")
    monkeypatch.setenv("MODERATION_IMAGES__ALLOW_HTTP", "false")
    monkeypatch.setenv("MODERATION_IMAGES__FETCH_TIMEOUT_S", "2.5")
    monkeypatch.setenv("MODERATION_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("MODERATION_LOG__FORMAT", "json")
    monkeypatch.setenv("MODERATION_POLICY__PATH", "/etc/moderation/policy.yaml")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.batching.max_size == 8
    assert settings.images.allow_http is False
    assert settings.images.fetch_timeout_s == 2.5
    assert settings.model.device == "cpu"
    assert settings.log.format == "json"
    assert settings.policy.path == Path("/etc/moderation/policy.yaml")
    # The rest of each group keeps its defaults.
    assert settings.kafka.input_topic == "images.uploaded"
    assert settings.batching.max_wait_ms == 200
    assert settings.images.allow_file is True


def test_environment_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("moderation_batching__max_wait_ms", "25")
    assert Settings().batching.max_wait_ms == 25


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHING__MAX_SIZE", "7")
    monkeypatch.setenv("DATA_DIR", "/nope")
    settings = Settings()
    assert settings.batching.max_size == 32
    assert settings.data_dir == Path("data")


def test_unknown_top_level_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_SOMETHING_NEW", "1")
    assert Settings().batching.max_size == 32


def test_typo_inside_a_group_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_KAFKA__BOOTSTRAP_SERVER", "k1:9092")  # missing the final S
    with pytest.raises(ValidationError, match="bootstrap_server"):
        Settings()


def test_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_DATABASE__URL", f"postgresql+psycopg://mod:{DB_PASSWORD}@db:5432/moderation")
    monkeypatch.setenv("MODERATION_KAFKA__SASL_PASSWORD", SASL_PASSWORD)
    settings = Settings()
    assert isinstance(settings.database.url, SecretStr)
    assert settings.database_url == f"postgresql+psycopg://mod:{DB_PASSWORD}@db:5432/moderation"
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == SASL_PASSWORD
    assert DB_PASSWORD not in repr(settings)
    assert SASL_PASSWORD not in repr(settings)


# --- .env files -------------------------------------------------------------------------------------


def test_dot_env_file_is_read(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text(
        "MODERATION_BATCHING__MAX_SIZE=16\n"
        "MODERATION_KAFKA__INPUT_TOPIC=uploads.from.env\n"
        "# a comment\n"
        "MODERATION_DATA_DIR=/var/lib/moderation\n"
        "UNRELATED=ignored\n",
        encoding="utf-8",
    )
    settings = Settings()
    assert settings.batching.max_size == 16
    assert settings.kafka.input_topic == "uploads.from.env"
    assert settings.data_dir == Path("/var/lib/moderation")
    assert settings.database_url == "sqlite:////var/lib/moderation/moderation.db"


def test_environment_beats_dot_env(clean_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_environment / ".env").write_text("MODERATION_BATCHING__MAX_SIZE=16\n", encoding="utf-8")
    monkeypatch.setenv("MODERATION_BATCHING__MAX_SIZE", "64")
    assert Settings().batching.max_size == 64


def test_invalid_value_in_dot_env_is_an_error(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text("MODERATION_MODEL__DEVICE=tpu\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="device"):
        Settings()


def test_dot_env_can_be_turned_off(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text("MODERATION_BATCHING__MAX_SIZE=16\n", encoding="utf-8")
    assert Settings(_env_file=None).batching.max_size == 32


# --- masking ----------------------------------------------------------------------------------------


def secret_settings(monkeypatch: pytest.MonkeyPatch, url: str) -> Settings:
    monkeypatch.setenv("MODERATION_DATABASE__URL", url)
    monkeypatch.setenv("MODERATION_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MODERATION_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MODERATION_KAFKA__SASL_USERNAME", "worker")
    monkeypatch.setenv("MODERATION_KAFKA__SASL_PASSWORD", SASL_PASSWORD)
    return Settings()


def test_masked_hides_database_password_and_sasl_password(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = secret_settings(monkeypatch, f"postgresql+psycopg://mod:{DB_PASSWORD}@db.internal:5432/moderation")
    masked = settings.masked()
    assert masked["database"]["url"] == f"postgresql+psycopg://mod:{MASK}@db.internal:5432/moderation"
    assert masked["kafka"]["sasl_password"] == MASK
    assert masked["kafka"]["sasl_username"] == "worker"  # not a secret
    dumped = json.dumps(masked)
    assert DB_PASSWORD not in dumped
    assert SASL_PASSWORD not in dumped
    # masking does not change the real settings
    assert settings.kafka.sasl_password.get_secret_value() == SASL_PASSWORD
    assert DB_PASSWORD in settings.database_url


@pytest.mark.parametrize(
    "password",
    ["p%40ss%3Aword", "p@ss:word", "12345"],
    ids=["percent-encoded", "raw-at-and-colon", "digits"],
)
def test_masked_never_leaks_awkward_passwords(monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    settings = secret_settings(monkeypatch, f"postgresql://admin:{password}@db:5432/moderation?sslmode=require")
    dumped = json.dumps(settings.masked())
    assert password not in dumped
    assert "admin" in dumped
    assert "sslmode=require" in dumped


def test_masked_is_plain_json_data() -> None:
    masked = Settings().masked()
    assert json.loads(json.dumps(masked)) == masked
    assert masked["database"]["url"] == "sqlite:///data/moderation.db"  # the effective URL, nothing to hide
    assert masked["kafka"]["sasl_password"] is None
    assert masked["batching"]["max_size"] == 32
    assert masked["data_dir"] == "data"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@host:5432/db", f"postgresql://u:{MASK}@host:5432/db"),
        ("postgresql://u:pw@host/db?sslmode=require", f"postgresql://u:{MASK}@host/db?sslmode=require"),
        ("postgresql://:pw@host/db", f"postgresql://:{MASK}@host/db"),
        ("postgresql://u@host/db", "postgresql://u@host/db"),
        ("sqlite:///data/moderation.db", "sqlite:///data/moderation.db"),
        ("postgresql://u:pw@[::1]:5432/db", f"postgresql://u:{MASK}@[::1]:5432/db"),
    ],
    ids=["port", "query", "no-user", "no-password", "sqlite", "ipv6"],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


# --- kafka client options ---------------------------------------------------------------------------


def test_client_options_plaintext() -> None:
    options = KafkaSettings(bootstrap_servers=" k1:9092, k2:9093 ,,", client_id="w-1").client_options()
    assert options == {
        "bootstrap_servers": ["k1:9092", "k2:9093"],
        "client_id": "w-1",
        "security_protocol": "PLAINTEXT",
        "bootstrap_timeout_ms": 30_000,
    }


def test_client_options_pass_sasl_and_ssl_through(tmp_path: Path) -> None:
    cafile = tmp_path / "ca.pem"
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="worker",
        sasl_password=SecretStr(SASL_PASSWORD),
        ssl_cafile=cafile,
    )
    options = kafka.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_username"] == "worker"
    assert options["sasl_plain_password"] == SASL_PASSWORD  # the real value, for the client
    assert options["ssl_cafile"] == str(cafile)


def test_client_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    options = secret_settings(monkeypatch, "sqlite:///x.db").kafka.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "worker"
    assert options["sasl_plain_password"] == SASL_PASSWORD


def test_client_options_without_a_mechanism_have_no_sasl_keys() -> None:
    options = KafkaSettings(sasl_username="worker", sasl_password=SecretStr("x")).client_options()
    assert not any(key.startswith("sasl") for key in options)
    assert "ssl_cafile" not in options


# --- invalid values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("MODERATION_MODEL__DEVICE", "gpu", "device"),
        ("MODERATION_BATCHING__MAX_SIZE", "0", "max_size"),
        ("MODERATION_BATCHING__MAX_SIZE", "4097", "max_size"),
        ("MODERATION_BATCHING__MAX_SIZE", "lots", "max_size"),
        ("MODERATION_BATCHING__MAX_WAIT_MS", "-1", "max_wait_ms"),
        ("MODERATION_KAFKA__SECURITY_PROTOCOL", "TLS", "security_protocol"),
        ("MODERATION_KAFKA__SASL_MECHANISM", "GSSAPI", "sasl_mechanism"),
        ("MODERATION_KAFKA__SESSION_TIMEOUT_MS", "10", "session_timeout_ms"),
        ("MODERATION_IMAGES__MAX_BYTES", "100", "max_bytes"),
        ("MODERATION_IMAGES__MAX_PIXELS", "0", "max_pixels"),
        ("MODERATION_IMAGES__FETCH_TIMEOUT_S", "0", "fetch_timeout_s"),
        ("MODERATION_IMAGES__ALLOW_HTTP", "perhaps", "allow_http"),
        ("MODERATION_LOG__LEVEL", "TRACE", "level"),
        ("MODERATION_LOG__FORMAT", "xml", "format"),
    ],
)
def test_invalid_values_from_the_environment_raise(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert any(err["loc"][-1] == field for err in info.value.errors())


@pytest.mark.parametrize(
    ("model", "kwargs"),
    [
        (BatchingSettings, {"max_size": 0}),
        (ImageSettings, {"max_bytes": 1023}),
        (KafkaSettings, {"bootstrap_server": "typo:9092"}),
    ],
)
def test_invalid_group_values_raise(model: type, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        model(**kwargs)


def test_boundary_values_are_accepted() -> None:
    assert BatchingSettings(max_size=1).max_size == 1
    assert BatchingSettings(max_size=4096).max_size == 4096
    assert ImageSettings(max_bytes=1024).max_bytes == 1024
    assert BatchingSettings(max_wait_ms=0).max_wait_ms == 0


# --- load_settings: what a command reads ------------------------------------------------------------


def test_load_settings_accepts_every_form_of_a_real_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODERATION_POLICY__SOURCES__KIDS-APP", "kids.yaml")  # one key of a dict setting
    monkeypatch.setenv("MODERATION_KAFKA", '{"client_id": "w-7"}')  # a whole group as JSON
    monkeypatch.setenv("moderation_batching__max_size", "8")  # names are case-insensitive
    monkeypatch.setenv("MODERATION_TEST_MODEL_DIR", str(tmp_path))  # the test suite's own knobs
    monkeypatch.setenv("MODERATION_TANSU_BIN", "/usr/bin/tansu")
    settings = load_settings()
    assert settings.policy.sources == {"kids-app": Path("kids.yaml")}
    assert settings.kafka.client_id == "w-7"
    assert settings.batching.max_size == 8


def test_load_settings_reports_every_problem_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_SOMETHING_NEW", "1")
    monkeypatch.setenv("MODERATION_POLICY__SHADOW", "candidate.yaml")  # a list must be JSON
    with pytest.raises(InvalidSettingsError) as info:
        load_settings()
    assert info.value.problems == [
        "unknown setting MODERATION_SOMETHING_NEW"
        " (no setting has a similar name: the README's Settings table lists them)",
        'MODERATION_POLICY__SHADOW: not valid JSON (expected a list like ["policies/candidate.yaml"]): '
        "Expecting value: line 1 column 1 (char 0)",
    ]


def test_load_settings_names_the_dot_env_file_for_its_values(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text("MODERATION_MODEL__DEVICE=tpu\n", encoding="utf-8")
    with pytest.raises(InvalidSettingsError) as info:
        load_settings()
    assert info.value.problems == [
        "MODERATION_MODEL__DEVICE in .env: Input should be 'auto', 'cpu' or 'cuda' (got 'tpu')"
    ]
    assert load_settings(env_file=None).model.device == "auto"
