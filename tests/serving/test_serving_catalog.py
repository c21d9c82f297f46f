"""The item catalogue's category feature IDs: what the item tower reads when every item is re-embedded."""

from __future__ import annotations

import numpy as np

from rtrec.recipe.examples import slot_ids
from serving.catalog import ItemCatalog

ITEM_SLOT, CATEGORY_SLOT = 2, 3


def test_category_ids_are_the_feature_ids_of_the_last_known_categories() -> None:
    catalog = ItemCatalog(ITEM_SLOT, CATEGORY_SLOT)
    names = [f"i{n}" for n in range(3000)]  # past the arrays' first growth
    catalog.learn(names, [f"c{n % 7}" if n % 5 else None for n in range(3000)])
    catalog.learn(["i1", "i2", "new"], ["moved", None, "c9"])  # i1 re-categorised, i2 kept, one new item
    asked = catalog.feature_ids(names + ["new", "never-seen"])
    ids, known = catalog.category_ids(asked)
    strings = np.array([c or "" for c in catalog.categories(asked)])
    expected_ids, expected_known = slot_ids(CATEGORY_SLOT, strings)  # how the trainer maps them
    assert known.tolist() == expected_known.tolist()
    assert ids[known].tolist() == expected_ids[expected_known].tolist()
    assert catalog.categories(catalog.feature_ids(["i1", "i5"])) == ["moved", None]
    assert not known[-1] and not known[5]
