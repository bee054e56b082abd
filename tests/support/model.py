"""Model fixtures: the offline test CLIP, a scorer on it, and the colour policy written for it.

Loaded by tests/conftest.py as a pytest plugin. The model is built once into
the default cache (`$MODERATION_TEST_MODEL_DIR` or ~/.cache/moderation/test-clip-v<N>) and reused by
later test runs, so only the first run on a machine pays the ~10 s build.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moderation.clip_scorer import ClipScorer
from moderation.policy import LoadedPolicy, load_policy
from moderation.testmodel import build_test_model
from tests.support.paths import POLICY

__all__ = ["scorer", "test_model_dir", "test_policy"]


@pytest.fixture(scope="session")
def test_model_dir() -> Path:
    """The built test CLIP checkpoint directory (built on first use, then cached across runs)."""
    return build_test_model()


@pytest.fixture(scope="session")
def scorer(test_model_dir: Path) -> ClipScorer:
    """A CPU scorer on the test model, shared by the session: loading it is the slow part."""
    return ClipScorer.load(str(test_model_dir), device="cpu")


@pytest.fixture(scope="session")
def test_policy() -> LoadedPolicy:
    """policies/test-model.yaml: blue and green are safe, red goes to review, yellow is blocked."""
    return load_policy(POLICY)
