"""Near-duplicate articles (the same wire story syndicated under other URLs) by 64-bit SimHash.

Fingerprints are signed 64-bit ints, so they go into a DuckDB BIGINT column as they are.

Only bodies of at least MIN_WORDS words get a fingerprint: in shorter texts (RSS-only fallbacks, teasers) a
couple of edited words move the hash as far as a different story does, so those are deduplicated by
canonical URL and guid alone.
"""

import hashlib
import re
import unicodedata
from collections import defaultdict

import numpy as np

MIN_WORDS = 50
SHINGLE_WORDS = 3
_BITS = 64
_MASK = (1 << _BITS) - 1
_BANDS = 4
_BAND_BITS = _BITS // _BANDS
_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _edge_weights(count: int) -> np.ndarray:
    """1 in the middle, rising linearly over the first quarter and falling over the last.

    Syndicated copies differ from the original mostly at the edges (bylines, "originally published on",
    newsletter pitches). With every shingle weighing 1, twenty such words on a 450-word story move the hash
    by about 6 bits; tapered, by 0 to 3 (measured on the demo pages), while unrelated stories stay ~30 apart.
    """
    ramp = max(1.0, count / 4)
    position = np.arange(count)
    return np.minimum(1.0, np.minimum((position + 1) / ramp, (count - position) / ramp))


def _simhash_words(words: list[str]) -> int:
    if not words:
        return 0
    shingles = [" ".join(words[i : i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))]
    # blake2b rather than hash(): fingerprints are stored, so they must not change between processes.
    digests = b"".join(hashlib.blake2b(s.encode(), digest_size=8).digest() for s in shingles)
    bits = np.unpackbits(np.frombuffer(digests, dtype=np.uint8)).reshape(len(shingles), _BITS)
    votes = (bits * 2.0 - 1.0).T @ _edge_weights(len(shingles))
    return int.from_bytes(np.packbits(votes > 0).tobytes(), "big", signed=True)


def simhash(text: str) -> int:
    """SimHash (signed 64-bit) over the 3-word shingles of the case-folded, NFKC-normalised words of `text`,
    each shingle weighted by its place in the text (see _edge_weights)."""
    return _simhash_words(_words(text))


def fingerprint(text: str) -> int | None:
    """simhash(text) for bodies of at least MIN_WORDS words, None for shorter ones."""
    words = _words(text)
    return _simhash_words(words) if len(words) >= MIN_WORDS else None


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit fingerprints (signed or unsigned spelling)."""
    return ((a ^ b) & _MASK).bit_count()


def _band_keys(fp: int) -> list[tuple[int, int]]:
    return [(band, (fp >> (band * _BAND_BITS)) & 0xFFFF) for band in range(_BANDS)]


class NearDuplicateIndex:
    """Fingerprints of stored articles, searchable for one within `max_distance` bits.

    Each fingerprint is filed under its four 16-bit bands. Two fingerprints at most 3 bits apart agree on at
    least one whole band, so a lookup only compares against the few entries sharing a band with the query.
    """

    def __init__(self, max_distance: int = 3) -> None:
        if not 0 <= max_distance < _BANDS:
            raise ValueError(
                f"max_distance must be between 0 and {_BANDS - 1} bits (a {_BANDS}-band index cannot"
                f" promise to find copies further apart), got {max_distance}"
            )
        self.max_distance = max_distance
        self._buckets: defaultdict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, article_id: int, fingerprint: int) -> None:
        if not -(1 << (_BITS - 1)) <= fingerprint <= _MASK:
            raise ValueError(f"fingerprint of article {article_id} does not fit in 64 bits: {fingerprint}")
        for key in _band_keys(fingerprint):
            self._buckets[key].append((article_id, fingerprint))
        self._size += 1

    def find(self, fingerprint: int) -> int | None:
        """Id of the closest stored article within max_distance bits (lowest id on ties), else None."""
        best: tuple[int, int] | None = None
        for key in _band_keys(fingerprint):
            for article_id, other in self._buckets.get(key, ()):
                candidate = (hamming(fingerprint, other), article_id)
                if candidate[0] <= self.max_distance and (best is None or candidate < best):
                    best = candidate
        return best[1] if best else None
