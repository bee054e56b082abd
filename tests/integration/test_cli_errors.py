"""The command line's error boundary: every command fails with one clear line and an exit status.

Most cases run the installed `moderation` entry point as a process, with a clean MODERATION_*
environment and a temporary working directory (so no developer's `.env` leaks in), and check the exit
status and that stderr is one line with no traceback. Unreachable Kafka is a loopback port nothing
listens on; the bootstrap timeout setting keeps those cases to a second or two.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from consumers import cli
from consumers.commands import settings as settings_command
from consumers.errors import CommandError, ExitCode, UsageError
from moderation import testmodel
from moderation.exceptions import ModerationError
from moderation.testmodel import ModelVerificationError, make_colour_image
from tests.support.paths import POLICY, REPO

MODERATION = Path(sys.executable).parent / "moderation"  # the console script pip installed
README = (REPO / "README.md").read_text(encoding="utf-8")


def moderation(*args: str, env: dict[str, str] | None = None, cwd: Path, timeout: float = 90) -> Any:
    """Run `moderation ARGS` with only the MODERATION_* variables given here (the test knobs stay)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("MODERATION_") or k.upper().startswith("MODERATION_TEST_")
    }
    return subprocess.run(
        [str(MODERATION), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env={**base, **(env or {})}
    )


def one_line(stderr: str) -> str:
    """The single line a failing command printed (ignoring log lines written before the failure)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unreachable_kafka(**extra: str) -> dict[str, str]:
    return {
        "MODERATION_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "MODERATION_KAFKA__BOOTSTRAP_TIMEOUT_MS": "1000",
        **extra,
    }


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """For in-process `cli.main` calls: no MODERATION_* setting and no .env from the checkout."""
    for name in list(os.environ):
        if name.upper().startswith("MODERATION_") and not name.upper().startswith("MODERATION_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def failing_handler(exc: BaseException) -> Any:
    def handler(args: argparse.Namespace, settings: Any) -> int:
        raise exc

    return handler


# --- 1. one boundary in main -----------------------------------------------------------------------


def test_an_unexpected_exception_is_one_line_and_exit_1(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(settings_command, "cmd_settings", failing_handler(ZeroDivisionError("division by zero")))
    assert cli.main(["settings"]) == ExitCode.FAILED
    err = capsys.readouterr().err
    assert err == (
        "error: unexpected ZeroDivisionError: division by zero (set MODERATION_LOG__LEVEL=DEBUG for the traceback)\n"
    )


def test_the_traceback_is_shown_at_debug_level(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODERATION_LOG__LEVEL", "DEBUG")
    monkeypatch.setattr(settings_command, "cmd_settings", failing_handler(ZeroDivisionError("division by zero")))
    assert cli.main(["settings"]) == ExitCode.FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: division by zero" in err


@pytest.mark.parametrize(
    ("exc", "status", "line"),
    [
        (ModerationError("the thing is broken"), ExitCode.FAILED, "error: the thing is broken"),
        (
            OperationalError("SELECT 1", {}, Exception("connection refused\n\tIs the server running?")),
            ExitCode.FAILED,
            "error: database sqlite:///data/moderation.db: connection refused",
        ),
        (
            PermissionError(13, "Permission denied", "/srv/out.json"),
            ExitCode.FAILED,
            "error: /srv/out.json: Permission denied",
        ),
        (KeyboardInterrupt(), 130, "error: interrupted"),
    ],
    ids=["moderation-error", "sqlalchemy", "os-error", "interrupt"],
)
def test_known_failures_are_one_line(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    exc: BaseException,
    status: int,
    line: str,
) -> None:
    monkeypatch.setattr(settings_command, "cmd_settings", failing_handler(exc))
    assert cli.main(["settings"]) == status
    assert capsys.readouterr().err == line + "\n"


def test_command_errors_carry_their_exit_status(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert isinstance(CommandError.user("x"), UsageError) and CommandError.user("x").exit_code is ExitCode.USAGE
    assert CommandError.external_dependency("x").exit_code is ExitCode.FAILED
    monkeypatch.setattr(settings_command, "cmd_settings", failing_handler(CommandError.user("no such file")))
    assert cli.main(["settings"]) == ExitCode.USAGE
    assert capsys.readouterr().err == "error: no such file\n"


# --- 2. an unreachable broker ----------------------------------------------------------------------


def test_produce_to_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    image = tmp_path / "red.png"
    make_colour_image("red", (32, 32)).save(image)
    env = unreachable_kafka()
    result = moderation("produce", str(image), env=env, cwd=tmp_path)
    assert result.returncode == ExitCode.FAILED, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"error: cannot reach Kafka at {env['MODERATION_KAFKA__BOOTSTRAP_SERVERS']} (")
    assert "produced" not in result.stdout


def test_outcomes_run_against_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    env = unreachable_kafka(MODERATION_DATABASE__URL=f"sqlite:///{tmp_path / 'v.db'}")
    assert moderation("migrate", env=env, cwd=tmp_path).returncode == 0
    result = moderation("outcomes", "run", env=env, cwd=tmp_path)
    assert result.returncode == ExitCode.FAILED, result.stderr
    servers = env["MODERATION_KAFKA__BOOTSTRAP_SERVERS"]
    assert one_line(result.stderr).startswith(f"error: cannot reach Kafka at {servers}")


def test_run_against_an_unreachable_broker_is_one_line(tmp_path: Path, test_model_dir: Path) -> None:
    env = unreachable_kafka(
        MODERATION_DATABASE__URL=f"sqlite:///{tmp_path / 'v.db'}",
        MODERATION_MODEL__NAME_OR_PATH=str(test_model_dir),
        MODERATION_MODEL__DEVICE="cpu",
        MODERATION_POLICY__PATH=str(POLICY),
        MODERATION_OPS__ENABLED="false",
    )
    assert moderation("migrate", env=env, cwd=tmp_path).returncode == 0
    result = moderation("run", env=env, cwd=tmp_path)
    assert result.returncode == ExitCode.FAILED, result.stderr
    servers = env["MODERATION_KAFKA__BOOTSTRAP_SERVERS"]
    assert one_line(result.stderr).startswith(f"error: cannot reach Kafka at {servers}")


# --- 3. produce checks every path first ------------------------------------------------------------


@pytest.mark.parametrize("inline", [False, True], ids=["url", "inline"])
def test_produce_refuses_a_missing_file_before_producing_anything(tmp_path: Path, inline: bool) -> None:
    good = tmp_path / "red.png"
    make_colour_image("red", (32, 32)).save(good)
    missing = tmp_path / "nope.png"
    # The broker is unreachable: reaching it would fail differently, so the refusal comes first.
    args = ["produce", str(good), str(missing), *(["--inline"] if inline else [])]
    result = moderation(*args, env=unreachable_kafka(), cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert one_line(result.stderr) == f"error: {missing}: no such file; nothing was produced"
    assert result.stdout == ""


def test_produce_refuses_a_directory(tmp_path: Path) -> None:
    result = moderation("produce", str(tmp_path), env=unreachable_kafka(), cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert one_line(result.stderr) == f"error: {tmp_path}: not a regular file; nothing was produced"


# --- 4. a closed pipe ------------------------------------------------------------------------------


def test_a_reader_that_closes_early_is_a_quiet_exit(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("MODERATION_")}
    process = subprocess.Popen(
        [str(MODERATION), "settings"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=base
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like `| head -1` that has its line: closed long before the command writes
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == ExitCode.FAILED
    assert stderr == ""


# --- 5 and 6. settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("MODERATION_DATABSE__URL", "MODERATION_DATABASE__URL"),
        ("MODERATION_BATCHING_MAX_SIZE", "MODERATION_BATCHING__MAX_SIZE"),
        ("moderation_kafka__bootstrap_server", "MODERATION_KAFKA__BOOTSTRAP_SERVERS"),
    ],
)
def test_an_unknown_variable_is_refused_with_the_closest_name(tmp_path: Path, variable: str, suggestion: str) -> None:
    result = moderation("settings", env={variable: "64"}, cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE, result.stdout
    assert one_line(result.stderr) == f"error: unknown setting {variable.upper()} (did you mean {suggestion}?)"


def test_an_unknown_key_in_dot_env_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MODERATION_BATCHING__MAX_SIZ=8\nUNRELATED=1\n", encoding="utf-8")
    result = moderation("settings", cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE
    assert one_line(result.stderr) == (
        "error: unknown setting MODERATION_BATCHING__MAX_SIZ in .env (did you mean MODERATION_BATCHING__MAX_SIZE?)"
    )


def test_invalid_json_names_the_variable_and_the_expected_shape(tmp_path: Path) -> None:
    result = moderation("settings", env={"MODERATION_POLICY__SOURCES": "{kids-app: x.yaml}"}, cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE
    assert one_line(result.stderr).startswith(
        "error: MODERATION_POLICY__SOURCES: not valid JSON "
        '(expected an object like {"kids-app": "policies/kids.yaml"}): '
    )


def test_each_invalid_value_is_one_line_naming_its_variable(tmp_path: Path) -> None:
    result = moderation(
        "settings", env={"MODERATION_MODEL__DEVICE": "gpu", "MODERATION_BATCHING__MAX_SIZE": "0"}, cwd=tmp_path
    )
    assert result.returncode == ExitCode.USAGE
    assert "Traceback" not in result.stderr and "pydantic.dev" not in result.stderr
    assert sorted(result.stderr.splitlines()) == [
        "error: MODERATION_BATCHING__MAX_SIZE: Input should be greater than or equal to 1 (got '0')",
        "error: MODERATION_MODEL__DEVICE: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')",
    ]


# --- 7. no directories outside what the operator configured -----------------------------------------


def test_migrate_refuses_a_sqlite_file_under_a_missing_directory_tree(tmp_path: Path) -> None:
    database = tmp_path / "no" / "such" / "dir" / "x.db"
    result = moderation("migrate", env={"MODERATION_DATABASE__URL": f"sqlite:///{database}"}, cwd=tmp_path)
    assert result.returncode == ExitCode.FAILED, result.stdout
    line = one_line(result.stderr)
    assert str(database.parent) in line and "does not exist" in line
    assert not (tmp_path / "no").exists()


def test_migrate_creates_the_default_data_directory(tmp_path: Path) -> None:
    result = moderation("migrate", cwd=tmp_path)  # the default URL: sqlite:///data/moderation.db
    assert result.returncode == ExitCode.OK, result.stderr
    assert (tmp_path / "data" / "moderation.db").is_file()


# --- 8. a test model that fails verification -------------------------------------------------------


def test_a_failed_test_model_build_is_one_line(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert issubclass(ModelVerificationError, ModerationError)
    monkeypatch.setattr(testmodel, "_train", lambda model, directory, progress: None)  # untrained: fails
    assert cli.main(["test-model", "build", "--out", str(clean_env / "model")]) == ExitCode.FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"^error: test model reached only \d+\.\d% zero-shot accuracy$", err, re.MULTILINE), err
    assert not (clean_env / "model").exists()


def test_an_os_error_with_a_file_name_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = moderation("test-model", "build", "--out", str(blocker / "sub" / "model"), cwd=tmp_path)
    assert result.returncode == ExitCode.FAILED
    assert one_line(result.stderr).startswith(f"error: {blocker}")


# --- 9. embeddings prune --older-than-days ---------------------------------------------------------


@pytest.mark.parametrize("days", ["-1", "0", "nan", "inf", "lots"])
def test_prune_refuses_a_retention_that_is_not_a_positive_number(tmp_path: Path, days: str) -> None:
    result = moderation("embeddings", "prune", "--older-than-days", days, cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE
    assert "--older-than-days" in result.stderr and "positive number of days" in result.stderr
    assert "keep" not in result.stdout
    assert not (tmp_path / "data").exists()  # refused before touching the database


def test_prune_with_the_settings_retention_of_0_keeps_everything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    env = {"MODERATION_DATABASE__URL": url, "MODERATION_EMBEDDINGS__RETENTION_DAYS": "0"}
    assert moderation("migrate", env=env, cwd=tmp_path).returncode == 0
    result = moderation("embeddings", "prune", env=env, cwd=tmp_path)
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.stdout.startswith("MODERATION_EMBEDDINGS__RETENTION_DAYS is 0 (keep embeddings forever)")
    pruned = moderation("embeddings", "prune", "--older-than-days", "0.5", env=env, cwd=tmp_path)
    assert pruned.returncode == ExitCode.OK, pruned.stderr
    assert pruned.stdout.startswith("deleted 0 embeddings stored more than 0.5 days ago")


# --- 10. the ops port is taken ----------------------------------------------------------------------


def test_run_with_the_ops_port_in_use_is_one_line(tmp_path: Path, test_model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "MODERATION_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "MODERATION_DATABASE__URL": f"sqlite:///{tmp_path / 'v.db'}",
            "MODERATION_MODEL__NAME_OR_PATH": str(test_model_dir),
            "MODERATION_MODEL__DEVICE": "cpu",
            "MODERATION_POLICY__PATH": str(POLICY),
            "MODERATION_OPS__HOST": "127.0.0.1",
            "MODERATION_OPS__PORT": str(port),
        }
        result = moderation("run", env=env, cwd=tmp_path)
    assert result.returncode == ExitCode.FAILED, result.stderr
    line = one_line(result.stderr)
    assert f"127.0.0.1:{port}" in line and "in use" in line
    assert "model and policies loaded" not in result.stderr  # it failed before the slow part


# --- 11. the README lists every command and option ---------------------------------------------------


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("moderation",)) -> dict[str, list[str]]:
    """'moderation policy check' -> its long options, for every command that runs something."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        return {" ".join(path): options}
    found: dict[str, list[str]] = {}
    for name, child in subparsers[0].choices.items():
        found |= leaf_commands(child, (*path, name))
    return found


def test_the_readme_command_table_lists_every_command_and_option() -> None:
    commands = leaf_commands(cli.build_parser())
    assert len(commands) >= 13
    rows = {
        match.group(1): line
        for line in README.splitlines()
        if (match := re.match(r"\| `(moderation [a-z -]+?)(?: [\[A-Z(]|`)", line))
    }
    assert set(commands) <= set(rows), sorted(set(commands) - set(rows))
    missing = [
        f"{command} {option}"
        for command, options in commands.items()
        for option in options
        if option not in rows[command]
    ]
    assert not missing


def test_the_readme_documents_exit_statuses_and_unknown_variables() -> None:
    section = README.split("## Command line", 1)[1].split("\n## ", 1)[0]
    for status in ExitCode:
        assert f"`{status.value}`" in section
    assert "`130`" in section
    settings = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    assert "unknown" in settings and "did you mean" in settings
