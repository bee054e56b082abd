"""PDQ hashes (moderation/perceptual.py): the ThreatExchange notation, robustness to what uploads go through
(re-encodes, resizes, small crops, light noise), flat pictures' low quality, and the loader computing
them from the picture it decoded."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from moderation.images import load_bytes
from moderation.perceptual import MATCH_DISTANCE, hamming, parse_pdq, pdq_hash
from moderation.preprocess import PreprocessSpec
from moderation.settings import ImageSettings
from tests.support.images import photo


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _bits_reference(image: Image.Image) -> str:
    """ThreatExchange's own conversion: the bit vector read as one binary number, first bit highest."""
    import pdqhash

    bits, _ = pdqhash.compute(np.asarray(image))
    return f"{int(''.join(str(int(b)) for b in bits), 2):064x}"


def test_the_hex_is_threatexchanges_notation() -> None:
    image = photo((400, 300), 3)
    assert pdq_hash(image).hex == _bits_reference(image)
    assert len(pdq_hash(image).hex) == 64


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_copies_an_upload_goes_through_stay_within_the_match_distance(seed: int) -> None:
    original = photo((900, 600), seed)
    reference = pdq_hash(original)
    rng = np.random.default_rng(seed)
    noisy = np.clip(np.asarray(original, dtype=np.int16) + rng.integers(-6, 7, (600, 900, 3)), 0, 255)
    copies = {
        "jpeg q60": _jpeg(original, 60),
        "half size": original.resize((450, 300)),
        "twice": original.resize((1800, 1200)),
        "0.6% crop": original.crop((5, 4, 895, 596)),  # PDQ tolerates small crops only (1-2% can pass 31)
        "light noise": Image.fromarray(noisy.astype(np.uint8)),
    }
    for name, copy in copies.items():
        assert hamming(reference.hex, pdq_hash(copy).hex) <= MATCH_DISTANCE, name
    assert reference.matchable


def test_different_pictures_are_far_apart_and_flat_ones_are_never_matchable() -> None:
    hashes = [pdq_hash(photo((600, 400), seed)).hex for seed in range(8)]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(distances) > 2 * MATCH_DISTANCE  # about half of the 256 bits, far from any match
    flat = pdq_hash(Image.new("RGB", (500, 500), (128, 128, 128)))
    faint_line = np.full((300, 300, 3), 90, np.uint8) + np.eye(300, dtype=np.uint8)[..., None]
    nearly_flat = pdq_hash(Image.fromarray(faint_line))
    assert not flat.matchable and not nearly_flat.matchable
    assert pdq_hash(Image.new("RGB", (1, 1))).quality == 0  # a 1-pixel picture hashes, worthlessly


def test_hex_is_parsed_strictly() -> None:
    assert parse_pdq(" " + "AB" * 32 + "\n") == bytes.fromhex("ab" * 32)
    with pytest.raises(ValueError, match="64 hex characters, not 63"):
        parse_pdq("a" * 63)
    with pytest.raises(ValueError, match="hex characters only"):
        parse_pdq("g" * 64)
    assert hamming("00" * 32, "ff" + "00" * 31) == 8


def test_the_loader_hashes_the_picture_it_decoded_unless_told_not_to() -> None:
    original = photo((1200, 800), 5)
    data = io.BytesIO()
    original.save(data, "JPEG", quality=90)
    spec = PreprocessSpec(crop_size=(224, 224), shortest_edge=224)
    loaded = load_bytes(data.getvalue(), ImageSettings(), spec)  # a draft decode, as the workers do
    assert loaded.pdq is not None and loaded.pixels is not None
    assert hamming(loaded.pdq.hex, pdq_hash(original).hex) <= 8  # the reduced decode hashes the same
    assert load_bytes(data.getvalue(), ImageSettings(pdq=False), spec).pdq is None


def test_every_verdict_carries_its_pictures_hash_into_the_database(scorer: object, database_url: str) -> None:
    from moderation.moderator import Moderator
    from moderation.policy import parse_policy
    from moderation.storage import VerdictStore, create_engine_for, upgrade
    from tests.support.events import event
    from tests.support.policies import colour_policy

    data = io.BytesIO()
    photo((640, 480), 9).save(data, "PNG")
    moderator = Moderator(scorer, parse_policy(colour_policy()), ImageSettings(), loader_threads=2)  # type: ignore[arg-type]
    try:
        verdicts = moderator.moderate([event("p", data.getvalue()), event("bad", b"not an image")])
    finally:
        moderator.close()
    good, bad = verdicts
    assert good.pdq_hash == pdq_hash(photo((640, 480), 9)).hex and good.pdq_quality == 100
    assert bad.pdq_hash is None and bad.pdq_quality is None
    upgrade(database_url)
    store = VerdictStore(create_engine_for(database_url))
    store.save_batch(verdicts)
    stored = store.get("p")
    assert stored is not None and (stored.pdq_hash, stored.pdq_quality) == (good.pdq_hash, 100)
    store.engine.dispose()
