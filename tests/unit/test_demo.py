"""The demo's fast parts: which policy it applies from any directory, and that its file:// samples load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumers.demo import _demo_settings, _write_samples, bundled_policy, demo_policy
from consumers.settings import Settings
from moderation.events import ImageEvent, parse_event
from moderation.exceptions import ImageLoadError
from moderation.fetch import REASON_NOT_FOUND, fetch_bytes
from moderation.policy import load_policy
from tests.support.paths import REPO


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory outside the repo, with no policies/ of its own."""
    cwd = tmp_path / "somewhere-else"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MODERATION_POLICY__PATH", raising=False)
    return cwd


def test_the_default_policy_is_found_outside_the_repo(elsewhere: Path) -> None:
    settings = Settings(_env_file=None)
    assert not settings.policy.path.exists()  # relative to a directory that has none
    policy = demo_policy(settings, None, using_test_model=False)
    assert policy.is_absolute()
    assert policy.read_bytes() == (REPO / "policies" / "default.yaml").read_bytes()
    assert load_policy(policy).policy.categories


def test_the_test_model_policy_is_found_outside_the_repo(elsewhere: Path) -> None:
    policy = demo_policy(Settings(_env_file=None), None, using_test_model=True)
    assert policy == bundled_policy("test-model.yaml")
    assert load_policy(policy).policy.categories


def test_an_explicit_policy_wins(elsewhere: Path) -> None:
    mine = elsewhere / "mine.yaml"
    assert demo_policy(Settings(_env_file=None), mine, using_test_model=True) == mine


def test_a_configured_policy_path_is_kept_as_configured(elsewhere: Path) -> None:
    """Only the built-in default falls back to the shipped copy; an operator's own path is never swapped."""
    settings = Settings(_env_file=None, policy={"path": "policies/strict.yaml"})
    assert demo_policy(settings, None, using_test_model=False) == Path("policies/strict.yaml")


def test_the_demo_reads_its_samples_under_its_own_root(elsewhere: Path) -> None:
    data_dir = Path("data") / "demo"  # relative, as MODERATION_DATA_DIR is by default
    settings = _demo_settings(Settings(_env_file=None), data_dir, bundled_policy("test-model.yaml"))
    assert settings.images.file_root == (elsewhere / "data" / "demo" / "images")
    events = [parse_event(json.dumps(e).encode()) for e in _write_samples(data_dir / "images") if isinstance(e, dict)]
    files = [e for e in events if e.image_url is not None]
    assert len(files) >= 5
    outcomes: dict[str, bytes | str] = {}
    for event in files:
        try:
            outcomes[event.content_id] = fetch_bytes(event, settings.images)
        except ImageLoadError as exc:
            outcomes[event.content_id] = exc.reason
    assert outcomes.pop("10-missing-file") == REASON_NOT_FOUND  # missing, not refused: it is under the root
    assert all(isinstance(data, bytes) for data in outcomes.values())


def test_without_the_demo_root_its_file_samples_are_refused(elsewhere: Path) -> None:
    """The demo needs its own root: a plain worker's settings would refuse the same events."""
    raw = next(e for e in _write_samples(Path("imgs")) if isinstance(e, dict) and "image_url" in e)
    event = ImageEvent.model_validate(raw)
    with pytest.raises(ImageLoadError) as info:
        fetch_bytes(event, Settings(_env_file=None).images)
    assert info.value.reason == "not_allowed"
