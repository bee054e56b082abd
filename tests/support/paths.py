"""Where the repository and its files are, independent of where a test module sits under tests/."""

from __future__ import annotations

from pathlib import Path

# tests/support/paths.py -> the repository root, two folders up.
REPO = Path(__file__).resolve().parent.parent.parent
POLICIES = REPO / "policies"
# The policy written for the offline test model: blue and green are safe, red is reviewed, yellow blocked.
POLICY = POLICIES / "test-model.yaml"
