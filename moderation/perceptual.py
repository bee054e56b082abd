"""PDQ perceptual hashes: what known-content banks match images by (Meta's PDQ, as ThreatExchange and
Hasher-Matcher-Actioner use it).

A PDQ hash is 256 bits from the picture's luminance, so that re-encodes, resizes, small crops and light
noise move few bits while different pictures differ in about half of them; two hashes *match* within a
Hamming distance (31 is PDQ's recommended). Its quality (0-100) says how much structure the picture
had: a flat or nearly flat picture gets a low quality and a hash that would match other flat pictures,
so such hashes must never match (`MIN_MATCH_QUALITY`).

The hash is computed by the loader threads from the picture they decoded anyway, scaled down first:
PDQ reduces every picture to 64 x 64 luminance blocks, so a 512-pixel copy gives the hash of the full
picture for a fraction of the work (a 12-megapixel upload would otherwise take a quarter of a second).
Notation: 64 lowercase hex characters, the first bit the most significant, as ThreatExchange exports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PDQ_BITS = 256
PDQ_HEX_LENGTH = PDQ_BITS // 4
MATCH_DISTANCE = 31  # PDQ's recommended match threshold
MIN_MATCH_QUALITY = 50  # below this, ThreatExchange's tools do not trust a hash to match
_HASH_EDGE = 512  # the longest edge hashed: PDQ downsamples to 64 x 64 blocks whatever it is given


@dataclass(frozen=True)
class PdqHash:
    hex: str  # 64 lowercase hex characters
    quality: int  # 0-100

    @property
    def matchable(self) -> bool:
        """Whether the hash carries enough of the picture to be matched against a bank."""
        return self.quality >= MIN_MATCH_QUALITY


def pdq_hash(image: Image.Image) -> PdqHash:
    """The PDQ hash and quality of an RGB picture (scaled to at most 512 pixels on its longest edge)."""
    import pdqhash  # compiled; imported where it is used so that the rest of the package loads without it

    longest = max(image.size)
    if longest > _HASH_EDGE:
        # Always to the same edge, so two copies of a picture are hashed at the same scale (scale moves
        # PDQ bits: 1200 px hashed at 300 and at 400 differed by 12). A box average by a whole factor
        # first (a quarter of the cost of resizing all the way), then a box resize of what is left.
        factor = longest // _HASH_EDGE
        if factor > 1:
            image = image.reduce(factor)
        scale = _HASH_EDGE / max(image.size)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BOX)
    rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    bits, quality = pdqhash.compute(rgb)
    return PdqHash(bytes(np.packbits(np.asarray(bits, dtype=np.uint8))).hex(), int(quality))


def parse_pdq(text: str) -> bytes:
    """The 32 bytes of a PDQ hash written in hex; ValueError saying what is wrong otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"a PDQ hash is a string of {PDQ_HEX_LENGTH} hex characters, not {type(text).__name__}")
    cleaned = text.strip().lower()
    if len(cleaned) != PDQ_HEX_LENGTH:
        raise ValueError(f"a PDQ hash is {PDQ_HEX_LENGTH} hex characters, not {len(cleaned)}")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError("a PDQ hash is hex characters only (0-9, a-f)") from None


def hamming(a: str | bytes, b: str | bytes) -> int:
    """The number of bits in which two PDQ hashes (hex or bytes) differ."""
    left = parse_pdq(a) if isinstance(a, str) else a
    right = parse_pdq(b) if isinstance(b, str) else b
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).bit_count()
