"""The README is the contract users read: it must match the code's settings and CI's command."""

from __future__ import annotations

from consumers.settings import environment_variables
from tests.support.paths import REPO

README = (REPO / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    variables = environment_variables()
    assert len(variables) > 20
    missing = [v for v in variables if f"`{v}`" not in README]
    assert not missing


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test   #" in README.split("## How it works")[0]
    assert "make test" in (REPO / ".ci" / "run").read_text()
