"""Hash banks: known-bad images' PDQ hashes, matched before the model (issue 15).

`pdq_index` holds `HashIndex`, the exact Hamming-radius index a worker looks a batch of hashes up in;
`mih` the multi-index hashing segments behind it.
"""

from moderation.banks.pdq_index import DEFAULT_MAX_DISTANCE, HashIndex, parse_hex, to_hex

__all__ = ["DEFAULT_MAX_DISTANCE", "HashIndex", "parse_hex", "to_hex"]
