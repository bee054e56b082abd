"""moderation/moderator.py with the fake scorer (tests/support/fakes.py).

One verdict per event, in order, failures isolated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from consumers.producer import image_event
from moderation.contracts import Scorer
from moderation.events import ImageEvent
from moderation.images import REASON_NOT_AN_IMAGE, REASON_NOT_FOUND, LoadedImage
from moderation.moderator import REASON_SCORE_FAILED, LoadedBatch, Moderator
from moderation.policy import LoadedPolicy, parse_policy
from moderation.policy_book import PolicyBook
from moderation.settings import ImageSettings
from moderation.verdict import LoadFailure, Verdict, VerdictStatus
from tests.support.fakes import COLOURS, PROBABILITIES, SPEC, FakeDecoder, FakeScorer

POLICY = parse_policy(
    """\
version: colours-7
categories:
  safe: {prompts: [a blue picture, a green picture]}
  red: {prompts: [a red picture], threshold: 0.5, action: review}
  yellow: {prompts: [a yellow picture], threshold: 0.5, action: block}
""",
    "colours.yaml",
)
# The fake scorer, held to this file's policy: it may score under POLICY only.
colour_scorer = partial(FakeScorer, only_policy=POLICY)


def png(colour: str) -> bytes:
    buffer = BytesIO()
    Image.new("RGB", (16, 16), COLOURS[colour]).save(buffer, "PNG")
    return buffer.getvalue()


def inline(colour: str, event_id: str) -> ImageEvent:
    return ImageEvent.model_validate(
        image_event(content_id=f"content-{event_id}", source="test", image_bytes=png(colour), event_id=event_id)
    )


def bad_bytes(event_id: str) -> ImageEvent:
    return ImageEvent.model_validate(
        image_event(content_id=f"content-{event_id}", source="test", image_bytes=b"not an image", event_id=event_id)
    )


@pytest.fixture
def scorer() -> FakeScorer:
    return colour_scorer()


@pytest.fixture
def moderator(scorer: FakeScorer, tmp_path: Path) -> Iterator[Moderator]:
    # Tests write their file:// images under tmp_path, the root that file:// reads need.
    moderator = Moderator(scorer, POLICY, ImageSettings(file_root=tmp_path), loader_threads=3)
    try:
        yield moderator
    finally:
        moderator.close()


def by_id(verdicts: list[Verdict]) -> dict[str, Verdict]:
    return {v.event_id: v for v in verdicts}


# --- order and decisions ----------------------------------------------------------------------------


def test_verdicts_come_back_in_event_order(moderator: Moderator, tmp_path: Path) -> None:
    events = [
        inline("red", "e0"),
        bad_bytes("e1"),
        inline("blue", "e2"),
        ImageEvent.model_validate(
            image_event(content_id="c3", source="t", image_url=(tmp_path / "x.png").as_uri(), event_id="e3")
        ),
        inline("yellow", "e4"),
        inline("green", "e5"),
    ]
    verdicts = moderator.moderate(events)
    assert [v.event_id for v in verdicts] == ["e0", "e1", "e2", "e3", "e4", "e5"]
    assert [v.content_id for v in verdicts] == [e.content_id for e in events]
    assert [v.top_category for v in verdicts] == ["red", None, "safe", None, "yellow", "safe"]


def test_decisions_follow_the_policy(moderator: Moderator) -> None:
    red, yellow, blue, green = moderator.moderate(
        [inline("red", "r"), inline("yellow", "y"), inline("blue", "b"), inline("green", "g")]
    )
    assert (red.status, red.flagged, red.top_category, red.action) == (VerdictStatus.OK, True, "red", "review")
    assert (yellow.flagged, yellow.top_category, yellow.action) == (True, "yellow", "block")
    assert (blue.flagged, blue.top_category, blue.action) == (False, "safe", "allow")
    assert (green.flagged, green.top_category, green.action) == (False, "safe", "allow")
    assert red.scores == PROBABILITIES["red"]
    assert red.best_prompt == "a red picture"
    assert red.error_reason is None and red.error_detail is None


def test_loadable_images_are_scored_in_one_batch(moderator: Moderator, scorer: FakeScorer) -> None:
    moderator.moderate([inline("red", "a"), bad_bytes("b"), inline("blue", "c")])
    assert scorer.calls == [["red", "blue"]]


def test_empty_batch(moderator: Moderator, scorer: FakeScorer) -> None:
    assert moderator.moderate([]) == []
    assert scorer.calls == []


# --- load failures ----------------------------------------------------------------------------------


def test_unloadable_images_become_error_verdicts(moderator: Moderator, tmp_path: Path) -> None:
    missing = ImageEvent.model_validate(
        image_event(content_id="cm", source="t", image_url=(tmp_path / "gone.png").as_uri(), event_id="missing")
    )
    verdicts = by_id(moderator.moderate([inline("red", "ok"), bad_bytes("junk"), missing]))
    ok, junk, gone = verdicts["ok"], verdicts["junk"], verdicts["missing"]
    assert ok.status is VerdictStatus.OK and ok.flagged
    for verdict, reason in ((junk, REASON_NOT_AN_IMAGE), (gone, REASON_NOT_FOUND)):
        assert verdict.status is VerdictStatus.ERROR
        assert verdict.error_reason == reason
        assert verdict.error_detail
        assert verdict.flagged is False
        assert verdict.top_category is None
        assert verdict.action is None
        assert verdict.scores == {}
        assert verdict.best_prompt is None
        assert verdict.image_sha256 is None  # nothing was loaded
        assert verdict.load_ms is None
        assert verdict.score_ms is None
    assert "gone.png" in gone.error_detail


def test_when_nothing_loads_the_scorer_is_not_called(moderator: Moderator, scorer: FakeScorer) -> None:
    verdicts = moderator.moderate([bad_bytes("a"), bad_bytes("b")])
    assert [v.status for v in verdicts] == [VerdictStatus.ERROR, VerdictStatus.ERROR]
    assert scorer.calls == []


# --- score failures ---------------------------------------------------------------------------------


def test_a_batch_the_scorer_rejects_is_scored_image_by_image(moderator: Moderator, scorer: FakeScorer) -> None:
    events = [inline("red", "a"), inline("magenta", "poison"), bad_bytes("junk"), inline("blue", "c")]
    verdicts = moderator.moderate(events)
    assert [v.event_id for v in verdicts] == ["a", "poison", "junk", "c"]
    assert scorer.calls == [["red", "magenta", "blue"], ["red"], ["magenta"], ["blue"]]

    red, poison, junk, blue = verdicts
    assert (red.status, red.action, red.top_category) == (VerdictStatus.OK, "review", "red")
    assert (blue.status, blue.action) == (VerdictStatus.OK, "allow")
    assert junk.error_reason == REASON_NOT_AN_IMAGE

    assert poison.status is VerdictStatus.ERROR
    assert poison.error_reason == REASON_SCORE_FAILED == "score_failed"
    assert poison.error_detail == "RuntimeError: magenta breaks the model"
    assert poison.scores == {} and poison.action is None and poison.flagged is False
    # The image did load: its identity and load time are kept on the error verdict.
    assert poison.image_sha256 == hashlib.sha256(png("magenta")).hexdigest()
    assert poison.load_ms is not None and poison.load_ms >= 0


def test_a_scorer_returning_too_few_scores_falls_back_to_one_by_one() -> None:
    scorer = colour_scorer(short_by_one=True)
    moderator = Moderator(scorer, POLICY, ImageSettings(), loader_threads=2)
    try:
        verdicts = moderator.moderate([inline("red", "a"), inline("blue", "b")])
    finally:
        moderator.close()
    assert [v.status for v in verdicts] == [VerdictStatus.OK, VerdictStatus.OK]
    assert [v.top_category for v in verdicts] == ["red", "safe"]
    assert scorer.calls == [["red", "blue"], ["red"], ["blue"]]


def test_error_detail_is_capped() -> None:
    verbose = colour_scorer(error=ValueError("v" * 5000))
    moderator = Moderator(verbose, POLICY, ImageSettings(), loader_threads=1)
    try:
        [verdict] = moderator.moderate([inline("red", "a")])
    finally:
        moderator.close()
    assert verdict.error_reason == REASON_SCORE_FAILED
    assert len(verdict.error_detail) == 1000
    assert verdict.error_detail.startswith("ValueError: vvv")


# --- what every verdict carries ---------------------------------------------------------------------


def test_verdicts_carry_policy_model_and_image_identity(moderator: Moderator) -> None:
    events = [inline("red", "ok"), bad_bytes("bad"), inline("magenta", "poison")]
    verdicts = moderator.moderate(events)
    for event, verdict in zip(events, verdicts, strict=True):
        assert verdict.policy_version == "colours-7"
        assert verdict.policy_hash == POLICY.sha256
        assert verdict.model_id == "fake/colour-scorer-1"
        assert verdict.image_ref == event.image_ref
        assert verdict.image_ref.startswith("inline:sha256:")
        assert verdict.source == "test"
        assert verdict.uploaded_at == event.uploaded_at
    ok = verdicts[0]
    assert ok.image_sha256 == hashlib.sha256(png("red")).hexdigest()
    assert ok.image_ref == f"inline:sha256:{ok.image_sha256}"
    assert ok.load_ms is not None and ok.load_ms >= 0
    assert ok.score_ms is not None and ok.score_ms >= 0


def test_url_events_keep_their_url_as_image_ref(moderator: Moderator, tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(png("red"))
    event = ImageEvent.model_validate(image_event(content_id="c", source="t", image_url=path.as_uri()))
    [verdict] = moderator.moderate([event])
    assert verdict.status is VerdictStatus.OK
    assert verdict.image_ref == path.as_uri()
    assert verdict.image_sha256 == hashlib.sha256(png("red")).hexdigest()


def test_scores_are_rounded_to_six_places() -> None:
    precise = {colour: {"safe": 0.123456789, "red": 0.87654321, "yellow": 1e-9} for colour in PROBABILITIES}
    moderator = Moderator(colour_scorer(table=precise), POLICY, ImageSettings(), loader_threads=1)
    try:
        [verdict] = moderator.moderate([inline("red", "a")])
    finally:
        moderator.close()
    assert verdict.scores == {"safe": 0.123457, "red": 0.876543, "yellow": 0.0}
    assert verdict.action == "review"


def test_a_new_policy_applies_to_the_next_batch(moderator: Moderator) -> None:
    stricter = parse_policy(
        "version: colours-8\ncategories:\n  safe: {prompts: [a blue picture]}\n"
        "  red: {prompts: [a red picture], threshold: 0.9, action: escalate}\n"
        "  yellow: {prompts: [a yellow picture], threshold: 0.5, action: block}\n"
    )

    moderator.scorer = FakeScorer()  # scores under any policy
    moderator.use_policies(PolicyBook(stricter))
    [verdict] = moderator.moderate([inline("red", "a")])
    assert verdict.policy_version == "colours-8"
    assert verdict.policy_hash == stricter.sha256 != POLICY.sha256
    assert verdict.flagged is False  # 0.8 is under the new 0.9 threshold
    assert verdict.action == "allow"


def test_scores_that_do_not_fit_the_policy_fail_only_their_own_event() -> None:
    # Probabilities without the `yellow` category for red pictures: scores that do not fit.
    missing = {**PROBABILITIES, "red": {k: v for k, v in PROBABILITIES["red"].items() if k != "yellow"}}
    moderator = Moderator(colour_scorer(table=missing), POLICY, ImageSettings(), loader_threads=2)
    try:
        verdicts = by_id(moderator.moderate([inline("red", "r"), inline("blue", "b")]))
    finally:
        moderator.close()
    assert verdicts["r"].status is VerdictStatus.ERROR
    assert verdicts["r"].error_reason == REASON_SCORE_FAILED
    assert "yellow" in (verdicts["r"].error_detail or "")
    assert verdicts["b"].status is VerdictStatus.OK
    assert verdicts["b"].action == "allow"


# --- the two halves: load, then score ---------------------------------------------------------------


def test_load_then_score_is_moderate(moderator: Moderator, scorer: FakeScorer) -> None:
    events = [inline("red", "a"), bad_bytes("b"), inline("blue", "c")]
    batch = moderator.load(events)
    assert isinstance(batch, LoadedBatch)
    assert batch.events == tuple(events)
    loaded, failed, other = batch.items
    assert isinstance(loaded, LoadedImage) and isinstance(other, LoadedImage)
    assert loaded.image is not None and loaded.pixels is None  # the fake scorer has no preprocess_spec
    assert failed == LoadFailure(REASON_NOT_AN_IMAGE, failed.detail) and failed.detail  # type: ignore[union-attr]
    assert scorer.calls == []  # loading never touches the model
    verdicts = moderator.score(batch)
    assert [v.top_category for v in verdicts] == ["red", None, "safe"]
    assert scorer.calls == [["red", "blue"]]
    assert by_id(verdicts)["b"].error_reason == REASON_NOT_AN_IMAGE


def test_load_one_from_many_threads_and_score_loaded(moderator: Moderator) -> None:
    events = [inline(colour, f"e{i}") for i, colour in enumerate(["red", "yellow", "blue", "green"] * 3)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        items = list(pool.map(moderator.load_one, events))
    assert all(isinstance(item, LoadedImage) for item in items)
    verdicts = moderator.score_loaded(events, items)
    assert [v.event_id for v in verdicts] == [e.event_id for e in events]
    assert [v.top_category for v in verdicts] == ["red", "yellow", "safe", "safe"] * 3


def test_load_one_turns_load_errors_into_failures(moderator: Moderator, tmp_path: Path) -> None:
    missing = ImageEvent.model_validate(image_event(content_id="c", source="t", image_url=(tmp_path / "x").as_uri()))
    failure = moderator.load_one(missing)
    assert isinstance(failure, LoadFailure) and failure.reason == REASON_NOT_FOUND


def test_a_batch_needs_one_item_per_event() -> None:
    with pytest.raises(ValueError, match="2 events but 1 loaded items"):
        LoadedBatch((inline("red", "a"), inline("red", "b")), (LoadFailure("x", "y"),))


# --- a scorer that takes model inputs ---------------------------------------------------------------

# The fake scorer with a `preprocess_spec`: the loaders make its model inputs, as they do for ClipScorer.
pixel_scorer = partial(colour_scorer, spec=SPEC)


def test_loaders_make_the_model_input_and_the_batch_is_scored_from_it() -> None:
    scorer = pixel_scorer()
    moderator = Moderator(scorer, POLICY, ImageSettings(), loader_threads=2)
    try:
        batch = moderator.load([inline("red", "a"), inline("blue", "b"), bad_bytes("c")])
        assert batch.items[0].pixels.shape == (3, 8, 8)  # type: ignore[union-attr]
        verdicts = moderator.score(batch)
    finally:
        moderator.close()
    assert scorer.pixel_calls == [["red", "blue"]] and scorer.calls == []
    assert [v.top_category for v in verdicts] == ["red", "safe", None]


def test_a_pixel_batch_the_scorer_rejects_is_scored_image_by_image() -> None:
    scorer = pixel_scorer()
    moderator = Moderator(scorer, POLICY, ImageSettings(), loader_threads=2)
    try:
        verdicts = moderator.moderate([inline("red", "a"), inline("magenta", "poison"), inline("blue", "c")])
    finally:
        moderator.close()
    assert scorer.pixel_calls == [["red", "magenta", "blue"], ["red"], ["magenta"], ["blue"]]
    assert [v.status for v in verdicts] == [VerdictStatus.OK, VerdictStatus.ERROR, VerdictStatus.OK]
    assert verdicts[1].error_reason == REASON_SCORE_FAILED
    assert verdicts[1].error_detail == "RuntimeError: magenta breaks the model"


def test_model_inputs_for_a_scorer_that_cannot_take_them_are_score_errors() -> None:
    # Only if the scorer is swapped between loading and scoring a batch: each event errs, none is lost.
    moderator = Moderator(pixel_scorer(), POLICY, ImageSettings(), loader_threads=1)
    try:
        batch = moderator.load([inline("yellow", "a"), bad_bytes("b")])
        moderator.scorer = plain = colour_scorer()  # no preprocess_spec: it takes only decoded pictures
        verdicts = moderator.score(batch)
    finally:
        moderator.close()
    assert plain.calls == []
    assert [v.error_reason for v in verdicts] == [REASON_SCORE_FAILED, REASON_NOT_AN_IMAGE]
    assert "takes only images" in (verdicts[0].error_detail or "")


# --- JPEGs left for a GPU decode --------------------------------------------------------------------


def jpeg_event(colour: str, event_id: str, orientation: int = 1, mode: str = "RGB") -> ImageEvent:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = BytesIO()
    Image.new("RGB", (24, 16), COLOURS[colour]).convert(mode).save(buffer, "JPEG", quality=100, exif=exif.tobytes())
    return ImageEvent.model_validate(
        image_event(content_id=f"content-{event_id}", source="test", image_bytes=buffer.getvalue(), event_id=event_id)
    )


def gpu_scorer(refuse: int = -1) -> FakeScorer:
    """Declares GPU decode: a `FakeDecoder` that refuses (None) the JPEG at position `refuse`."""
    return pixel_scorer(decoder=FakeDecoder(SPEC, refuse=refuse))


def test_jpegs_are_left_encoded_for_the_gpu_and_decoded_there_in_one_batch() -> None:
    scorer = gpu_scorer()
    moderator = Moderator(scorer, POLICY, ImageSettings(), loader_threads=2)
    try:
        events = [jpeg_event("red", "a", orientation=6), inline("blue", "png"), jpeg_event("yellow", "c")]
        batch = moderator.load(events)
        jpeg, png_item, _ = batch.items
        assert isinstance(jpeg, LoadedImage) and jpeg.image is None and jpeg.pixels is None
        assert jpeg.encoded is not None and jpeg.orientation == 6
        assert isinstance(png_item, LoadedImage) and png_item.pixels is not None and png_item.encoded is None
        verdicts = moderator.score(batch)
    finally:
        moderator.close()
    assert scorer.decoder is not None and scorer.decoder.calls == [[6, 1]]
    assert scorer.pixel_calls == [["red", "blue", "yellow"]]
    assert [v.top_category for v in verdicts] == ["red", "safe", "yellow"]
    assert all(v.load_ms is not None and v.load_ms >= 0 for v in verdicts)


def test_jpegs_the_gpu_refuses_are_decoded_on_the_cpu() -> None:
    scorer = gpu_scorer(refuse=0)
    moderator = Moderator(scorer, POLICY, ImageSettings(), loader_threads=2)
    try:
        verdicts = moderator.moderate([jpeg_event("red", "a"), jpeg_event("blue", "b")])
    finally:
        moderator.close()
    assert [v.top_category for v in verdicts] == ["red", "safe"]
    assert scorer.pixel_calls == [["red", "blue"]]


def test_what_the_gpu_cannot_take_is_decoded_by_the_loaders() -> None:
    scorer = gpu_scorer()
    moderator = Moderator(scorer, POLICY, ImageSettings(max_pixels=100), loader_threads=2)
    try:
        big, cmyk = moderator.load([jpeg_event("red", "big"), jpeg_event("red", "cmyk", mode="CMYK")]).items
    finally:
        moderator.close()
    assert isinstance(big, LoadFailure) and big.reason == "too_many_pixels"  # 24x16 > 100: refused as before
    moderator = Moderator(scorer, POLICY, ImageSettings(), loader_threads=1)
    try:
        [cmyk] = moderator.load([jpeg_event("red", "cmyk", mode="CMYK")]).items
    finally:
        moderator.close()
    assert isinstance(cmyk, LoadedImage) and cmyk.encoded is None and cmyk.pixels is not None


# --- the real scorer end to end ---------------------------------------------------------------------


def test_the_clip_scorer_is_fed_preprocessed_pixels(
    monkeypatch: pytest.MonkeyPatch, test_model_dir: Path, test_policy: LoadedPolicy
) -> None:
    from moderation.clip_scorer import ClipScorer
    from moderation.testmodel import make_colour_image

    clip = ClipScorer.load(str(test_model_dir), device="cpu")
    monkeypatch.setattr(clip, "score", lambda *a: pytest.fail("the reference path must not be used"))
    events = []
    for i, colour in enumerate(["red", "yellow", "blue", "green"]):
        buffer = BytesIO()
        make_colour_image(colour, (400 + 37 * i, 300), seed=i).save(buffer, "JPEG", quality=90)
        events.append(ImageEvent.model_validate(
            image_event(content_id=f"c{i}", source="t", image_bytes=buffer.getvalue(), event_id=colour)
        ))
    moderator = Moderator(clip, test_policy, ImageSettings(), loader_threads=2)
    try:
        verdicts = moderator.moderate(events)
    finally:
        moderator.close()
    assert [(v.top_category, v.action) for v in verdicts] == [
        ("red", "review"), ("yellow", "block"), ("safe", "allow"), ("safe", "allow")
    ]


def test_an_unexpected_loader_error_is_that_events_error_verdict(
    moderator: Moderator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import moderation.moderator as module

    real_load = module.load_event

    def flaky_load(event: ImageEvent, *args: object, **kwargs: object) -> LoadedImage:
        if event.event_id == "poison":
            raise MemoryError("decoder exploded")  # not an ImageLoadError: a decoder bug, say
        return real_load(event, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "load_event", flaky_load)
    verdicts = by_id(moderator.moderate([inline("red", "poison"), inline("blue", "fine")]))
    assert verdicts["poison"].status is VerdictStatus.ERROR
    assert verdicts["poison"].error_reason == module.REASON_LOAD_FAILED
    assert "MemoryError: decoder exploded" in (verdicts["poison"].error_detail or "")
    assert verdicts["fine"].status is VerdictStatus.OK


# --- the contract ---------------------------------------------------------------------------------


def test_the_real_and_the_fake_scorer_implement_the_scorer_contract(test_model_dir: Path) -> None:
    from moderation.clip_scorer import ClipScorer

    assert isinstance(ClipScorer.load(str(test_model_dir), device="cpu"), Scorer)
    assert isinstance(colour_scorer(), Scorer) and isinstance(gpu_scorer(), Scorer)


def test_the_moderator_keeps_the_text_side_of_every_policy_ready() -> None:
    shadow = parse_policy(
        "version: colours-shadow\ncategories:\n  safe: {prompts: [a blue picture]}\n"
        "  red: {prompts: [a red picture], threshold: 0.9, action: review}\n"
    )
    fake = FakeScorer()
    book = PolicyBook(POLICY, shadows=(shadow,))
    moderator = Moderator(fake, book, ImageSettings(), loader_threads=1)
    assert (fake.kept, fake.texts) == (2, [])
    moderator.use_policies(book)
    assert fake.texts == ["colours-7", "colours-shadow"]
    moderator.close()
