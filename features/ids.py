"""64-bit feature IDs from a slot and a raw value, the keys of the parameter server's tables.

Layout of a feature ID (``uint64``)::

    bit 63 .. 56   slot      (8 bits: 256 slots, e.g. user_id, item_id, category)
    bit 55         hashed    (0: the value below is the raw integer, 1: a hash of the raw value)
    bit 54 .. 0    value     (55 bits)

* Integers in ``[0, 2**55)`` -- and strings that are their canonical decimal spelling, such as
  MovieLens' ``"1193"`` -- map exactly, so they can never collide with each other.
* Any other value (strings, negative or huge integers) goes through BLAKE2b with an 8-byte digest,
  keeping 55 bits and setting the ``hashed`` bit, so a hashed value never equals an exact one.
  Two distinct hashed values of one slot share an ID with probability about ``n**2 / 2**56`` for
  ``n`` distinct values: 1.4e-5 for a million values, 1.4e-3 for ten million -- negligible next to
  the ``id % size`` folding the tables never do, but not zero, hence said here.

>>> int(feature_ids(1, [7])[0]) == (1 << 56) | 7
True
>>> slot_of(feature_ids(3, ["shoes", "1193", 1193])).tolist()
[3, 3, 3]
>>> a, b, c = feature_ids(3, ["shoes", "1193", 1193]).tolist()
>>> b == c, a == b, is_hashed(feature_ids(3, ["shoes"])).tolist()
(True, False, [True])
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np

__all__ = ["SLOT_BITS", "VALUE_BITS", "MAX_SLOT", "feature_ids", "feature_id", "slot_of",
           "is_hashed"]

SLOT_BITS = 8
VALUE_BITS = 55
MAX_SLOT = (1 << SLOT_BITS) - 1
_SLOT_SHIFT = np.uint64(64 - SLOT_BITS)
_HASHED_BIT = np.uint64(1 << VALUE_BITS)
_VALUE_MASK = np.uint64((1 << VALUE_BITS) - 1)
_EXACT_LIMIT = 1 << VALUE_BITS


def feature_ids(slot: int, values: Iterable[object] | np.ndarray) -> np.ndarray:
    """The feature IDs (``uint64``) of a batch of raw values of one slot, in input order.

    Integer numpy arrays take a fully vectorised path; other batches go value by value only for
    those that need hashing (one BLAKE2b call each, the digests joined into one buffer).
    """
    if not 0 <= int(slot) <= MAX_SLOT:
        raise ValueError(f"slot must be in [0, {MAX_SLOT}], got {slot}")
    prefix = np.uint64(int(slot)) << _SLOT_SHIFT
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return prefix | _integer_values(values)
    items = list(values)
    out = np.empty(len(items), dtype=np.uint64)
    exact_pos, exact_val, hashed_pos, hashed_raw = _split_exact(items)
    out[exact_pos] = np.asarray(exact_val, dtype=np.uint64)
    if hashed_raw:
        out[hashed_pos] = _hash_values(hashed_raw)
    return prefix | out


def feature_id(slot: int, value: object) -> int:
    """The feature ID of one raw value, as a Python int (see :func:`feature_ids`)."""
    return int(feature_ids(slot, [value])[0])


def slot_of(ids: np.ndarray) -> np.ndarray:
    """The slot (high 8 bits) of each feature ID."""
    return (np.asarray(ids, dtype=np.uint64) >> _SLOT_SHIFT).astype(np.int64)


def is_hashed(ids: np.ndarray) -> np.ndarray:
    """Whether each feature ID holds a hash of its raw value rather than the value itself."""
    return (np.asarray(ids, dtype=np.uint64) & _HASHED_BIT) != 0


def _integer_values(values: np.ndarray) -> np.ndarray:
    """Exact for integers in range, hashed (of their decimal text) for the rest."""
    as_int = values.astype(np.int64) if values.dtype.kind == "i" else None
    if as_int is not None and (as_int.size == 0 or (as_int.min() >= 0 and as_int.max() < _EXACT_LIMIT)):
        return as_int.astype(np.uint64)
    if as_int is None and (values.size == 0 or int(values.max()) < _EXACT_LIMIT):
        return values.astype(np.uint64)
    # Rare: out-of-range integers; hash them like any other value (per value, justified by rarity).
    exact_pos, exact_val, hashed_pos, hashed_raw = _split_exact(values.tolist())
    out = np.empty(values.size, dtype=np.uint64)
    out[exact_pos] = np.asarray(exact_val, dtype=np.uint64)
    out[hashed_pos] = _hash_values(hashed_raw)
    return out


def _split_exact(items: list[object]) -> tuple[list[int], list[int], list[int], list[bytes]]:
    """Partition values into exactly representable integers and byte strings to hash."""
    exact_pos: list[int] = []
    exact_val: list[int] = []
    hashed_pos: list[int] = []
    hashed_raw: list[bytes] = []
    for i, value in enumerate(items):  # per value: Python objects of mixed type, no vector form
        exact = _exact_int(value)
        if exact is None:
            hashed_pos.append(i)
            hashed_raw.append(value if isinstance(value, bytes) else str(value).encode("utf-8"))
        else:
            exact_pos.append(i)
            exact_val.append(exact)
    return exact_pos, exact_val, hashed_pos, hashed_raw


def _exact_int(value: object) -> int | None:
    """The value as an exact in-range integer, or None when it must be hashed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, str) and value.isdigit() and value.isascii() and str(int(value)) == value:
        number = int(value)
    else:
        return None
    return number if 0 <= number < _EXACT_LIMIT else None


def _hash_values(raw: list[bytes]) -> np.ndarray:
    """55-bit BLAKE2b hashes of byte strings, with the ``hashed`` bit set."""
    digests = b"".join(hashlib.blake2b(v, digest_size=8).digest() for v in raw)
    return (np.frombuffer(digests, dtype="<u8") & _VALUE_MASK) | _HASHED_BIT


def distinct(values: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct values in first-seen order and each value's position among them.

    Dict-based: for the tens to thousands of IDs of one batch it is cheaper than sorting strings
    with ``np.unique`` (~60 us per call even for a handful).

    >>> distinct(["b", "a", "b"])
    (['b', 'a'], array([0, 1, 0]))
    """
    position: dict[str, int] = {}
    inverse = [position.setdefault(v, len(position)) for v in values]  # per value: one dict op
    return list(position), np.asarray(inverse, dtype=np.int64)
