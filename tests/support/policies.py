"""A colour policy for the offline test model, with the knobs tests turn: version, red threshold, scoring."""

from __future__ import annotations

COLOUR_POLICY = """
version: "{version}"
scoring: {scoring}
categories:
  safe: {{prompts: ["a blue picture", "a green picture", "a white picture", "a black picture"]}}
  red: {{prompts: ["a red picture"], threshold: {red}, action: review{margin}}}
  yellow: {{prompts: ["a yellow picture"], threshold: 0.5, action: block}}
"""


def colour_policy(version: str = "c1", red: float = 0.5, scoring: str = "softmax", margin: float | None = None) -> str:
    """The policy's YAML text; `margin` adds an uncertain band around the red threshold."""
    band = f", uncertain_margin: {margin}" if margin else ""
    return COLOUR_POLICY.format(version=version, scoring=scoring, red=red, margin=band)
