"""Feature IDs: exact for in-range integers, a strong hash otherwise, slot in the high bits."""

from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st

from features.ids import MAX_SLOT, VALUE_BITS, feature_id, feature_ids, is_hashed, slot_of


def test_integer_values_in_range_map_exactly() -> None:
    values = np.array([0, 1, 2**55 - 1], dtype=np.int64)
    ids = feature_ids(5, values)
    assert ids.dtype == np.uint64
    assert (ids & np.uint64(2**VALUE_BITS - 1)).tolist() == values.tolist()
    assert slot_of(ids).tolist() == [5, 5, 5]
    assert not is_hashed(ids).any()


def test_canonical_decimal_strings_equal_their_integer() -> None:
    assert feature_id(2, "1193") == feature_id(2, 1193) == feature_id(2, np.int64(1193))


def test_non_canonical_strings_are_hashed_not_parsed() -> None:
    assert feature_id(2, "01193") != feature_id(2, 1193)
    assert is_hashed(feature_ids(2, ["01193", "abc", "-5", "１２"])).all()


def test_vectorised_integer_path_equals_per_value_path() -> None:
    values = np.array([3, 2**60, 7], dtype=np.uint64)
    assert feature_ids(1, values).tolist() == feature_ids(1, values.tolist()).tolist()
    assert is_hashed(feature_ids(1, values)).tolist() == [False, True, False]


def test_same_value_in_different_slots_gives_different_ids() -> None:
    assert feature_id(1, "x") != feature_id(2, "x")
    assert slot_of(feature_ids(MAX_SLOT, ["x"])).tolist() == [MAX_SLOT]


def test_slot_out_of_range_is_a_value_error() -> None:
    import pytest

    with pytest.raises(ValueError):
        feature_ids(MAX_SLOT + 1, [1])


@given(st.lists(st.text(max_size=12), unique=True, max_size=200))
def test_distinct_strings_get_distinct_ids(values: list[str]) -> None:
    ids = feature_ids(3, values)
    assert np.unique(ids).size == len(values)
    assert (slot_of(ids) == 3).all()
