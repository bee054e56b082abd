"""Policies are data: YAML files validated into pydantic models, with a content hash for auditing.

A category is a set of text prompts. Categories with a threshold and an action are *unsafe*: an image
is flagged when the score of any unsafe category reaches its threshold. How a category is scored is
the policy's `scoring` mode:

- ``softmax`` (CLIP's zero-shot classification): the categories compete; a category's text embedding is
  the normalised mean of its prompts' embeddings and its score is a probability over all categories.
  The safe categories (no threshold) give benign images somewhere to go, so at least one is required.
- ``independent`` (as LAION's safety detector and the Stable Diffusion safety checker do): each category
  is scored alone, as the highest cosine similarity between the image and any of its prompts, against
  its own threshold; adding or removing a category changes no other category's score.
- ``sigmoid`` (SigLIP's own score): like ``independent``, each category alone, as the highest over its
  prompts of sigmoid(logit scale * cosine + logit bias), a probability of its own; for CLIP checkpoints
  (no logit bias) it is sigmoid(logit scale * cosine).

An unsafe category may instead be scored by a trained `head` (moderation/heads.py): a small file next to
the policy, pinned by its sha256, that turns the image embedding into a calibrated probability of the
category, learned from reviewers' labels (`moderation policy train`). The head's sha256 is part of the
policy's hash (its path is not: moving the file changes nothing it decides); its prompts stay the head's
starting point and explain verdicts. A head scores its category in any mode, so under softmax its score
is no longer part of the softmax: it is its own probability against its own threshold.

An unsafe category may set `uncertain_margin`: scores within that distance of its threshold are neither
allowed nor acted on but sent to review marked *uncertain*. A policy may also list golden `examples`
(image paths with the verdict they must get), which `moderation policy check` runs; they are not part
of the policy's meaning, so they do not change its hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from moderation.exceptions import PolicyError

if TYPE_CHECKING:  # imported when a policy has heads: most policies never need safetensors
    from moderation.heads import Head

CategoryName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
# Prompts and versions are stored with verdicts: no NUL, which PostgreSQL text cannot hold.
Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300, pattern=r"^[^\x00]+$")]


class Action(str, Enum):
    """What the platform should do with an image; `allow` is reserved for images that are not flagged."""

    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"
    ESCALATE = "escalate"


Sha256 = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[0-9a-fA-F]{64}$")]


class HeadRef(BaseModel):
    """Where a category's trained head lies (relative to the policy file) and the sha256 it must have."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=r"^[^\x00]+$")]
    sha256: Sha256


class Category(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompts: list[Prompt] = Field(min_length=1, max_length=256)
    threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    action: Action | None = None
    # Scores in [threshold - margin, threshold + margin) go to review marked uncertain, not decided.
    uncertain_margin: float | None = Field(default=None, gt=0.0, lt=1.0)
    # False: content that must not be retained (the law or the platform's rules forbid copies). An item
    # near this category gets no reviewer copy of its image: reviewers see scores, hashes and metadata.
    keep_media: bool = True
    description: str = ""
    head: HeadRef | None = None  # a trained head scores this category (unsafe categories only)

    @model_validator(mode="after")
    def _threshold_and_action_together(self) -> Category:
        if (self.threshold is None) != (self.action is None):
            raise ValueError("an unsafe category needs both 'threshold' and 'action'; a safe one neither")
        if self.uncertain_margin is not None and self.threshold is None:
            raise ValueError("'uncertain_margin' is a band around a threshold: only unsafe categories have one")
        if self.action is Action.ALLOW:
            raise ValueError("'allow' is not an action for an unsafe category (leave out threshold and action)")
        if len(set(self.prompts)) != len(self.prompts):
            raise ValueError("prompts must be unique within a category")
        if self.head is not None and self.threshold is None:
            raise ValueError("'head' scores an unsafe category against its threshold: a safe category has none")
        return self

    @property
    def unsafe(self) -> bool:
        return self.threshold is not None


ScoringMode = Literal["softmax", "independent", "sigmoid"]
ALLOW_EXPECTATION = "allow"  # a golden example that must not be flagged, whatever its top category


class Example(BaseModel):
    """A golden example: an image (path relative to the policy file) and the verdict it must get."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    # A category name (unsafe: flagged with it as the top category; safe: not flagged, top category it),
    # or "allow" (not flagged).
    expect: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    uncertain: bool | None = None  # when set, the verdict's uncertain mark must equal it


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\x00]+$")
    ]
    description: str = ""
    scoring: ScoringMode = "softmax"
    categories: dict[CategoryName, Category] = Field(min_length=1)
    # The fraction of allowed images sent to review all the same, drawn from the event_id (a redelivery
    # draws the same ones): what reviewers find there measures what the policy misses.
    audit_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    examples: list[Example] = Field(default_factory=list, max_length=10_000)

    @model_validator(mode="after")
    def _needs_safe_and_unsafe(self) -> Policy:
        if not any(c.unsafe for c in self.categories.values()):
            raise ValueError("at least one category needs a threshold and an action (nothing could be flagged)")
        if self.scoring == "softmax" and all(c.unsafe for c in self.categories.values()):
            raise ValueError(
                "with softmax scoring at least one category must be safe (no threshold): benign images need a home"
            )
        for example in self.examples:
            if example.expect != ALLOW_EXPECTATION and example.expect not in self.categories:
                raise ValueError(
                    f"example {example.image!r} expects {example.expect!r}: not a category and not 'allow'"
                )
        return self

    @property
    def category_names(self) -> list[str]:
        return list(self.categories)

    @property
    def unsafe_categories(self) -> dict[str, Category]:
        return {name: c for name, c in self.categories.items() if c.unsafe}

    def forbids_media(self, scores: dict[str, float], top_category: str | None) -> bool:
        """Whether no copy of this image may be kept: a `keep_media: false` category is its top category,
        or (unsafe) scored within its uncertain band or above its threshold. Erring on the side of not keeping."""
        for name, category in self.categories.items():
            if category.keep_media:
                continue
            if name == top_category:
                return True
            if category.threshold is not None:
                floor = category.threshold - (category.uncertain_margin or 0.0)
                if scores.get(name, 0.0) >= floor:
                    return True
        return False


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy plus where it came from and a hash of its meaning (not of its whitespace)."""

    policy: Policy
    path: str
    sha256: str
    text: str = field(default="", compare=False, repr=False)  # the YAML as read: what the database keeps
    # category -> its trained head, read and checked against the pinned sha256; empty when the policy has
    # none, or when it was parsed without its files (a stored policy: `heads_loaded` is then False).
    heads: Mapping[str, Head] = field(default_factory=dict, compare=False, repr=False)
    heads_loaded: bool = field(default=True, compare=False)

    @property
    def version(self) -> str:
        return self.policy.version

    def meaning(self) -> dict[str, object]:
        """What the hash covers, as plain data (golden examples and fields at their defaults left out)."""
        return policy_meaning(self.policy)


def policy_meaning(policy: Policy) -> dict[str, object]:
    """What a policy decides, as plain data: golden examples are left out, so adding a test case does not
    look like a policy change; so are fields at their defaults, so a new optional field does not change
    the hash of every existing policy."""
    meaning = policy.model_dump(mode="json", exclude={"examples"}, exclude_defaults=True)
    for category in meaning["categories"].values():
        if "head" in category:
            category["head"] = {"sha256": category["head"]["sha256"]}  # what it decides, not where it lies
    return meaning


def policy_hash(policy: Policy) -> str:
    """A hash of what the policy decides (`policy_meaning`, canonical JSON)."""
    canonical = json.dumps(policy_meaning(policy), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys: PyYAML silently keeps the last one, which would let
    a second `nsfw:` block quietly replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_policy(
    text: str, path: str = "<policy>", *, head_dir: Path | None = None, stored_heads: Mapping[str, bytes] | None = None
) -> LoadedPolicy:
    """Validate YAML text; raise `PolicyError` naming the file, each bad field and its problem.

    Head files are read from `head_dir` (relative `file` paths; a policy file's own directory), or taken
    from `stored_heads` (sha256 -> the file's bytes, as the database keeps them), and checked against their
    pinned sha256; with neither, a policy with heads is parsed but cannot score (`heads_loaded` False)."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise PolicyError(path, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from exc
    if not isinstance(raw, dict):
        raise PolicyError(path, [("(file)", "expected a mapping with 'version' and 'categories'")])
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        problems = [
            (".".join(str(part) for part in err["loc"]) or "(policy)", err["msg"]) for err in exc.errors()
        ]
        raise PolicyError(path, problems) from exc
    wanted = {name: c.head for name, c in policy.categories.items() if c.head is not None}
    readable = head_dir is not None or stored_heads is not None
    heads = _load_heads(wanted, head_dir, stored_heads, path) if wanted and readable else {}
    return LoadedPolicy(
        policy=policy, path=path, sha256=policy_hash(policy), text=text, heads=heads,
        heads_loaded=not wanted or readable,
    )


def _load_heads(
    wanted: Mapping[str, HeadRef], head_dir: Path | None, stored: Mapping[str, bytes] | None, path: str
) -> dict[str, Head]:
    """Each category's head, checked against its pin; every problem reported at once."""
    from moderation.heads import HeadError, head_from_bytes, load_head

    heads: dict[str, Head] = {}
    problems: list[tuple[str, str]] = []
    for name, ref in wanted.items():
        try:
            if head_dir is not None:
                head = load_head(head_dir / ref.file, ref.sha256)
            elif stored is not None and ref.sha256 in stored:
                head = head_from_bytes(stored[ref.sha256], f"{ref.file} (stored)")
                if head.sha256 != ref.sha256:
                    raise HeadError(f"the stored head {ref.sha256[:12]} has another sha256, {head.sha256}")
            else:
                raise HeadError(f"no head {ref.sha256[:12]} is stored with this policy")
        except HeadError as exc:
            problems.append((f"categories.{name}.head", str(exc)))
            continue
        if head.category and head.category != name:
            problems.append((f"categories.{name}.head", f"{ref.file} is the head of category {head.category!r}"))
            continue
        heads[name] = head
    if problems:
        raise PolicyError(path, problems)
    return heads


def load_policy(path: str | Path) -> LoadedPolicy:
    """Read and validate a policy file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(str(path), [("(file)", f"cannot be read: {exc}")]) from exc
    return parse_policy(text, str(path), head_dir=path.parent)
