"""moderation/policy.py: policies parse, shipped files load, errors name file/field/problem, hash is of meaning."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from moderation.exceptions import ConfigurationError, ModerationError, PolicyError
from moderation.policy import Action, LoadedPolicy, Policy, load_policy, parse_policy, policy_hash
from tests.support.paths import POLICIES

POLICIES_DIR = POLICIES
SHIPPED = sorted(POLICIES_DIR.glob("*.yaml"))

VALID = textwrap.dedent(
    """\
    # A comment that must not matter.
    version: "2024-06-01"
    description: "A small policy."
    categories:
      safe:
        description: "Everything benign."
        prompts:
          - "a photo of a cat"
          - "a landscape"
      nsfw:
        prompts: ["explicit content"]
        threshold: 0.8
        action: block
      violent:
        prompts: ["a fight", "a weapon pointed at someone"]
        threshold: 0.6
        action: review
      csam_suspect:
        prompts: ["something to escalate"]
        threshold: 0.3
        action: escalate
    """
)

# The same meaning as VALID: other key order, flow style, other comments and quoting, extra whitespace.
VALID_REFORMATTED = textwrap.dedent(
    """\
    categories:
      csam_suspect: {action: escalate, threshold: 0.30, prompts: ['something to escalate']}
      violent:
        action: review   # reviewers look at these
        prompts:
        - a fight
        - "a weapon pointed at someone"
        threshold: 6.0e-1
      safe: {prompts: [a photo of a cat, a landscape], description: Everything benign.}
      nsfw:
        threshold: .8
        action: "block"
        prompts:
          - "  explicit content  "
    description: 'A small policy.'
    version: '2024-06-01'
    """
)

SAFE = "  safe: {prompts: [a photo of a cat]}\n"
UNSAFE = "  nsfw: {prompts: [explicit content], threshold: 0.5, action: block}\n"


def policy_text(*category_lines: str, header: str = "version: v1\ncategories:\n") -> str:
    return header + "".join(category_lines)


def problems_of(text: str, path: str = "policies/bad.yaml") -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, path)
    assert info.value.path == path
    assert path in str(info.value)
    return info.value.problems


# --- valid policies ---------------------------------------------------------------------------------


def test_valid_policy_parses_into_the_model() -> None:
    loaded = parse_policy(VALID, "policies/x.yaml")
    assert isinstance(loaded, LoadedPolicy)
    assert loaded.path == "policies/x.yaml"
    assert loaded.version == "2024-06-01"
    policy = loaded.policy
    assert policy.description == "A small policy."
    assert policy.category_names == ["safe", "nsfw", "violent", "csam_suspect"]  # file order kept
    assert list(policy.unsafe_categories) == ["nsfw", "violent", "csam_suspect"]
    safe = policy.categories["safe"]
    assert safe.unsafe is False
    assert safe.threshold is None and safe.action is None
    assert safe.prompts == ["a photo of a cat", "a landscape"]
    assert safe.description == "Everything benign."
    nsfw = policy.categories["nsfw"]
    assert nsfw.unsafe is True
    assert nsfw.threshold == pytest.approx(0.8)
    assert nsfw.action is Action.BLOCK
    assert policy.categories["violent"].action is Action.REVIEW
    assert policy.categories["csam_suspect"].action is Action.ESCALATE
    assert len(loaded.sha256) == 64 and int(loaded.sha256, 16) >= 0
    assert loaded.sha256 == policy_hash(policy)


def test_prompts_and_version_are_stripped() -> None:
    loaded = parse_policy(
        policy_text("  safe: {prompts: ['  a cat  ']}\n", UNSAFE, header="version: '  v7  '\ncategories:\n")
    )
    assert loaded.version == "v7"
    assert loaded.policy.categories["safe"].prompts == ["a cat"]


def test_threshold_of_exactly_one_is_allowed() -> None:
    loaded = parse_policy(policy_text(SAFE, "  nsfw: {prompts: [x], threshold: 1, action: review}\n"))
    assert loaded.policy.categories["nsfw"].threshold == 1.0


def test_policy_models_are_frozen() -> None:
    policy = parse_policy(VALID).policy
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        policy.version = "other"  # type: ignore[misc]


def test_load_policy_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(VALID, encoding="utf-8")
    loaded = load_policy(path)
    assert loaded.path == str(path)
    assert loaded.version == "2024-06-01"
    assert loaded.sha256 == parse_policy(VALID).sha256
    assert load_policy(str(path)).sha256 == loaded.sha256  # str paths too


def test_at_least_one_policy_is_shipped() -> None:
    assert POLICIES_DIR / "test-model.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_policy_loads(path: Path) -> None:
    loaded = load_policy(path)
    assert loaded.version
    assert loaded.policy.unsafe_categories
    assert any(not c.unsafe for c in loaded.policy.categories.values())


def test_default_policy_has_the_documented_categories() -> None:
    loaded = load_policy(POLICIES_DIR / "default.yaml")
    names = set(loaded.policy.category_names)
    assert {"safe", "nsfw", "violent", "graphic"} <= names
    assert loaded.policy.categories["safe"].unsafe is False
    for name in ("nsfw", "violent", "graphic"):
        assert loaded.policy.categories[name].unsafe, name


def test_test_model_policy_matches_its_documentation() -> None:
    policy = load_policy(POLICIES_DIR / "test-model.yaml").policy
    assert policy.categories["red"].action is Action.REVIEW
    assert policy.categories["yellow"].action is Action.BLOCK
    assert not policy.categories["safe"].unsafe


# --- errors name file, field and problem ------------------------------------------------------------


def test_policy_error_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        parse_policy("version: v1\n")
    assert issubclass(PolicyError, ModerationError)


def test_unknown_field_typo_is_named() -> None:
    problems = problems_of(policy_text(SAFE, "  nsfw: {prompts: [x], threshhold: 0.5, action: block}\n"))
    assert problems[0][0] == "categories.nsfw.threshhold"
    assert "Extra inputs are not permitted" in problems[0][1]


def test_unknown_top_level_field_is_named() -> None:
    problems = problems_of(policy_text(SAFE, UNSAFE) + "versoin: 2\n")
    assert problems == [("versoin", "Extra inputs are not permitted")]


def test_error_message_lists_file_field_and_problem() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(policy_text(SAFE, "  nsfw: {prompts: [x], threshold: 2, action: block}\n"), "p/q.yaml")
    message = str(info.value)
    assert message.startswith("invalid policy")
    assert "p/q.yaml: categories.nsfw.threshold: Input should be less than or equal to 1" in message


@pytest.mark.parametrize(
    ("threshold", "problem"),
    [("1.5", "less than or equal to 1"), ("0", "greater than 0"), ("-0.1", "greater than 0")],
)
def test_threshold_out_of_range(threshold: str, problem: str) -> None:
    problems = problems_of(policy_text(SAFE, f"  nsfw: {{prompts: [x], threshold: {threshold}, action: block}}\n"))
    assert len(problems) == 1
    assert problems[0][0] == "categories.nsfw.threshold"
    assert problem in problems[0][1]


def test_threshold_must_be_a_number() -> None:
    problems = problems_of(policy_text(SAFE, "  nsfw: {prompts: [x], threshold: high, action: block}\n"))
    assert problems[0][0] == "categories.nsfw.threshold"
    assert "number" in problems[0][1]


def test_threshold_without_action() -> None:
    problems = problems_of(policy_text(SAFE, "  nsfw: {prompts: [x], threshold: 0.5}\n"))
    assert problems[0][0] == "categories.nsfw"
    assert "needs both 'threshold' and 'action'" in problems[0][1]


def test_action_without_threshold() -> None:
    problems = problems_of(policy_text(SAFE, "  nsfw: {prompts: [x], action: block}\n"))
    assert problems[0][0] == "categories.nsfw"
    assert "needs both 'threshold' and 'action'" in problems[0][1]


def test_allow_is_not_an_action_for_an_unsafe_category() -> None:
    problems = problems_of(policy_text(SAFE, "  nsfw: {prompts: [x], threshold: 0.5, action: allow}\n"))
    assert problems[0][0] == "categories.nsfw"
    assert "'allow' is not an action" in problems[0][1]


def test_unknown_action() -> None:
    problems = problems_of(policy_text(SAFE, "  nsfw: {prompts: [x], threshold: 0.5, action: delete}\n"))
    assert problems[0][0] == "categories.nsfw.action"
    assert "'review', 'block' or 'escalate'" in problems[0][1]


@pytest.mark.parametrize("prompts", ["[x, x]", "[x, '  x ']"], ids=["same", "same-after-strip"])
def test_duplicate_prompts(prompts: str) -> None:
    problems = problems_of(policy_text(SAFE, f"  nsfw: {{prompts: {prompts}, threshold: 0.5, action: block}}\n"))
    assert problems[0][0] == "categories.nsfw"
    assert "prompts must be unique" in problems[0][1]


def test_the_same_prompt_in_two_categories_is_allowed() -> None:
    loaded = parse_policy(policy_text(SAFE, "  nsfw: {prompts: [a photo of a cat], threshold: 0.5, action: block}\n"))
    assert loaded.policy.categories["nsfw"].prompts == ["a photo of a cat"]


def test_empty_prompt_list() -> None:
    problems = problems_of(policy_text(SAFE, "  nsfw: {prompts: [], threshold: 0.5, action: block}\n"))
    assert problems[0][0] == "categories.nsfw.prompts"
    assert "at least 1 item" in problems[0][1]


@pytest.mark.parametrize("prompt", ["''", "'   '"], ids=["empty", "blank"])
def test_empty_prompt_string(prompt: str) -> None:
    problems = problems_of(policy_text(SAFE, f"  nsfw: {{prompts: [ok, {prompt}], threshold: 0.5, action: block}}\n"))
    assert problems[0][0] == "categories.nsfw.prompts.1"
    assert "at least 1 character" in problems[0][1]


def test_missing_prompts() -> None:
    problems = problems_of(policy_text(SAFE, "  nsfw: {threshold: 0.5, action: block}\n"))
    assert ("categories.nsfw.prompts", "Field required") in problems


def test_overlong_prompt() -> None:
    problems = problems_of(policy_text(SAFE, f"  nsfw: {{prompts: ['{'x' * 301}'], threshold: 0.5, action: block}}\n"))
    assert problems[0][0] == "categories.nsfw.prompts.0"
    assert "at most 300" in problems[0][1]


@pytest.mark.parametrize("name", ["NSFW", "1nsfw", "nsf-w", "_nsfw", "n" * 64, "'nsfw x'"])
def test_bad_category_name(name: str) -> None:
    problems = problems_of(policy_text(SAFE, f"  {name}: {{prompts: [x], threshold: 0.5, action: block}}\n"))
    field, problem = problems[0]
    assert field.startswith("categories.")
    assert field.endswith("[key]")
    assert "should match pattern" in problem


def test_longest_allowed_category_name() -> None:
    name = "n" * 63
    loaded = parse_policy(policy_text(SAFE, f"  {name}: {{prompts: [x], threshold: 0.5, action: block}}\n"))
    assert name in loaded.policy.categories


def test_no_unsafe_category() -> None:
    problems = problems_of(policy_text(SAFE, "  other: {prompts: [a dog]}\n"))
    assert problems[0][0] == "(policy)"
    assert "at least one category needs a threshold and an action" in problems[0][1]


def test_no_safe_category() -> None:
    problems = problems_of(policy_text(UNSAFE, "  violent: {prompts: [a fight], threshold: 0.5, action: review}\n"))
    assert problems[0][0] == "(policy)"
    assert "at least one category must be safe" in problems[0][1]


def test_a_single_category_is_not_enough_for_softmax() -> None:
    problems = problems_of(policy_text(SAFE))
    assert problems[0][0] == "(policy)"
    assert "at least one category needs a threshold" in problems[0][1]
    problems = problems_of(policy_text(UNSAFE))
    assert "with softmax scoring at least one category must be safe" in problems[0][1]


def test_an_independent_policy_needs_no_safe_category() -> None:
    loaded = parse_policy(policy_text(UNSAFE, header='version: "1"\nscoring: independent\ncategories:\n'))
    assert loaded.policy.scoring == "independent"
    assert list(loaded.policy.unsafe_categories) == ["nsfw"]


def test_missing_version() -> None:
    problems = problems_of(policy_text(SAFE, UNSAFE, header="categories:\n"))
    assert ("version", "Field required") in problems


def test_several_problems_are_all_reported() -> None:
    problems = problems_of(
        policy_text(
            SAFE,
            "  nsfw: {prompts: [x], threshold: 7, action: block}\n",
            "  gore: {prompts: [], threshold: 0.5, action: review}\n",
        )
    )
    fields = {field for field, _ in problems}
    assert {"categories.nsfw.threshold", "categories.gore.prompts"} <= fields


def test_invalid_yaml_names_the_line() -> None:
    text = "version: v1\ncategories:\n\tsafe: {prompts: [a]}\n"
    problems = problems_of(text)
    assert len(problems) == 1
    field, problem = problems[0]
    assert field == "line 3, column 1"
    assert problem.startswith("not valid YAML:")


def test_invalid_yaml_unclosed_flow_sequence_names_a_later_line() -> None:
    text = "version: v1\ncategories:\n  safe:\n    prompts: [a, b\n  nsfw: {}\n"
    field, problem = problems_of(text)[0]
    assert field.startswith("line 5,")
    assert "not valid YAML" in problem


@pytest.mark.parametrize(
    "text",
    ["- a\n- b\n", "just a string\n", "42\n", "", "# only a comment\n"],
    ids=["list", "string", "number", "empty", "comment-only"],
)
def test_not_a_mapping(text: str) -> None:
    assert problems_of(text) == [("(file)", "expected a mapping with 'version' and 'categories'")]


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.path == str(path)
    [(field, problem)] = info.value.problems
    assert field == "(file)"
    assert problem.startswith("cannot be read:")
    assert str(path) in str(info.value)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert info.value.problems[0][0] == "(file)"
    assert "cannot be read" in info.value.problems[0][1]


def test_non_utf8_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(VALID.replace("A small policy.", "caf\u00e9").encode("latin-1"))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.problems[0][0] == "(file)"
    assert "cannot be read" in info.value.problems[0][1]


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(policy_text(SAFE, UNSAFE.replace("0.5", "1.5")), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.path == str(path)
    assert f"{path}: categories.nsfw.threshold:" in str(info.value)


# --- the hash is of meaning, not formatting ---------------------------------------------------------


def test_hash_ignores_formatting_comments_and_key_order() -> None:
    a = parse_policy(VALID)
    b = parse_policy(VALID_REFORMATTED)
    assert a.policy.model_dump() == b.policy.model_dump()
    assert a.sha256 == b.sha256


def test_hash_is_stable_across_parses_and_paths() -> None:
    assert parse_policy(VALID, "a.yaml").sha256 == parse_policy(VALID, "elsewhere/b.yaml").sha256


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("threshold: 0.8", "threshold: 0.81"),
        ('"explicit content"', '"explicit material"'),
        ("action: review", "action: block"),
        ('version: "2024-06-01"', 'version: "2024-06-02"'),
        ('  - "a landscape"\n', '  - "a landscape"\n      - "a sunset"\n'),
    ],
    ids=["threshold", "prompt", "action", "version", "added-prompt"],
)
def test_hash_changes_with_meaning(old: str, new: str) -> None:
    assert old in VALID
    changed = VALID.replace(old, new, 1)
    assert parse_policy(changed).sha256 != parse_policy(VALID).sha256


def test_policy_hash_matches_a_fresh_model() -> None:
    loaded = parse_policy(VALID)
    rebuilt = Policy.model_validate(loaded.policy.model_dump())
    assert policy_hash(rebuilt) == loaded.sha256


def test_duplicate_keys_are_refused_with_their_line() -> None:
    text = (
        "version: '1'\ncategories:\n  safe: {prompts: [a]}\n"
        "  nsfw: {prompts: [b], threshold: 0.5, action: block}\n"
        "  nsfw: {prompts: [c], threshold: 0.9, action: review}\n"
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "dup.yaml")
    assert "dup.yaml: line 5, column 3: not valid YAML: duplicate key 'nsfw'" in str(info.value)


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch /tmp/moderation-pwned']",
        "!!python/object/new:subprocess.Popen [['true']]",
        "!!python/name:os.system",
    ],
)
def test_yaml_tags_that_construct_objects_are_refused(tag: str, tmp_path: Path) -> None:
    """Policies are data: a tag asking PyYAML to build a Python object is a YAML error, never executed."""
    marker = Path("/tmp/moderation-pwned")
    marker.unlink(missing_ok=True)
    text = f"version: {tag}\ncategories:\n" + SAFE + UNSAFE
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "evil.yaml")
    assert "evil.yaml: line 1" in str(info.value) and "not valid YAML" in str(info.value)
    assert not marker.exists()


def test_a_policy_that_fails_validation_never_reaches_a_worker(tmp_path: Path) -> None:
    """The policy files a worker starts with are validated before any model loads; a broken one stops it."""
    from moderation.policy_book import PolicyFiles
    from moderation.settings import PolicySettings

    bad = tmp_path / "bad.yaml"
    bad.write_text(policy_text(SAFE, UNSAFE.replace("block", "delete")))
    with pytest.raises(PolicyError) as info:
        PolicyFiles(PolicySettings(path=POLICIES_DIR / "test-model.yaml", shadow=[bad]))
    assert f"{bad}: categories.nsfw.action" in str(info.value)
