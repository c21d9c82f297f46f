"""Real logged data as rtrec events, read from files inside wheels that rtrec never imports.

MovieLens-100K: the recbole wheel ships ``recbole/dataset_example/ml-100k/`` (100,000 ratings of
1,682 movies by 943 users, 1997-98). Every rating becomes a ``rating`` event (value = stars) with
the movie's first genre as its category, in timestamp order.

Open Bandit Dataset (``obd-random``, ``obd-bts``): the obp 0.4.1 wheel ships a 10,000-row sample
of each campaign (``all``, ``men``, ``women``) of ZOZOTOWN's fashion recommendations (Saito et al.
2020, one week of November 2019) under each logging policy (uniform ``random`` and Bernoulli
Thompson sampling ``bts``): real impressions with real clicks. See :func:`load_obd`.

Both wheels are installed with ``--no-deps`` (``make install``) and only their files are read.

The ``simulator`` dataset is :mod:`producers.simulator`'s stream, generated (not logged): see
:func:`load_simulated`.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
from datetime import datetime
from pathlib import Path
from typing import Sequence

from rtrec.errors import ImproperlyConfigured
from rtrec.events import Event

DATASETS = ("ml-100k", "obd-random", "obd-bts", "simulator")
#: Campaigns of the Open Bandit Dataset sample, each a folder with ``<campaign>.csv`` and ``item_context.csv``.
OBD_CAMPAIGNS = ("all", "men", "women")
#: Seconds from an OBD impression to the click event made of its ``click=1``.
OBD_CLICK_DELAY_S = 1.0


def ml100k_dir() -> Path:
    """The folder with ``ml-100k.inter`` and ``ml-100k.item`` (found without importing recbole)."""
    return package_data_dir("recbole", "recbole==1.2.1", Path("dataset_example/ml-100k"), "ml-100k.inter")


def package_data_dir(package: str, pin: str, folder: Path, marker: str) -> Path:
    """``folder`` inside an installed ``package`` that holds ``marker``, found without importing the
    package (rtrec only reads data files that wheels ship; ``make`` installs them ``--no-deps``)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImproperlyConfigured(f"{folder.name} comes from the {package} wheel: pip install --no-deps {pin} "
                                   "(make test / make demo do this)")
    path = Path(list(spec.submodule_search_locations)[0]) / folder
    if not (path / marker).is_file():
        raise ImproperlyConfigured(f"{path}/{marker} not found in the {package} install")
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


def obd_dir() -> Path:
    """The folder ``obp/dataset/obd`` with ``{random,bts}/{all,men,women}/*.csv`` (found without importing obp)."""
    return package_data_dir("obp", "obp==0.4.1", Path("dataset/obd"), "random/all/all.csv")


def _short(value: str) -> str:
    """The first 8 hex digits of one of OBD's (already hashed) categorical values."""
    return value[:8]


def load_obd(policy: str = "random", campaigns: Sequence[str] = OBD_CAMPAIGNS,
             folder: Path | None = None) -> list[Event]:
    """OBD impressions (and the clicks on them) of one logging policy, campaigns merged, in time order.

    Each CSV row is one item shown at one of three positions to a visitor. It becomes an
    ``impression`` event with its own ``request_id``, and when ``click`` is 1 also a ``click``
    event with the same ``request_id`` :data:`OBD_CLICK_DELAY_S` later (the sample does not say
    when the click came). OBD has no user ID: the visitor is known only by four hashed user
    features, so the ``user_id`` is a context key, a hash of those four values (~240 distinct keys
    per campaign; not a person), and the features, the position and the campaign are the
    impression's ``context`` (the logging policy's propensity is left out: it is the other
    system's belief about the item, not something this one would know). The campaigns' item IDs
    are unrelated (their item features do not overlap), so items are ``<campaign>:<item_id>``, and
    an item's category is its campaign and its hashed ``item_feature_1``. The
    ``user-item_affinity_*`` columns (almost all 0) are left out.
    """
    if policy not in ("random", "bts"):
        raise ValueError(f"unknown OBD policy {policy!r}; known: random, bts")
    folder = folder or obd_dir()
    events: list[Event] = []
    for campaign in campaigns:
        base = folder / policy / campaign
        categories = {}
        with (base / "item_context.csv").open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                categories[row["item_id"]] = f"{campaign}:{_short(row['item_feature_1'])}"
        with (base / f"{campaign}.csv").open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):  # per row: a dict of ~90 columns; 30,000 rows at most
                features = [row[f"user_feature_{k}"] for k in range(4)]
                user = "ctx-" + hashlib.blake2b("|".join(features).encode(), digest_size=6).hexdigest()
                item = row["item_id"]
                ts = datetime.fromisoformat(row["timestamp"]).timestamp()
                key = f"obd-{policy}-{campaign}:{row['']}"
                context = {f"uf{k}": _short(v) for k, v in enumerate(features)}
                context.update(position=row["position"], campaign=campaign)
                common = dict(user_id=user, item_id=f"{campaign}:{item}", request_id=key, context=context,
                              item={"category": categories.get(item, f"{campaign}:unknown")})
                events.append(Event(event_id=key, action="impression", ts=ts, **common))
                if row["click"] == "1":
                    events.append(Event(event_id=f"{key}:click", action="click", ts=ts + OBD_CLICK_DELAY_S,
                                        **common))
    events.sort(key=lambda e: e.ts)
    return events


def load_simulated(seconds: float = 600.0, requests_per_s: float = 10.0, seed: int = 0,
                   start: float = 1_700_000_000.0) -> list[Event]:
    """``seconds`` of :class:`~producers.simulator.ClickSimulator` traffic (its default world, as
    ``rtrec simulate`` draws it) in one-second chunks from ``start``: impressions with
    ``request_id`` and the clicks, likes, shares and purchases that follow, in time order."""
    from producers.simulator import ClickSimulator, SimulatorConfig

    sim = ClickSimulator(SimulatorConfig(seed=seed), run_id=f"sim{seed}")
    events: list[Event] = []
    for t in range(int(seconds)):
        events.extend(sim.traffic(start + t, start + t + 1.0, requests_per_s))
    events.sort(key=lambda e: e.ts)
    return events


def load_dataset(name: str) -> list[Event]:
    """A named dataset's events in timestamp order."""
    if name == "ml-100k":
        return load_ml100k()
    if name in ("obd-random", "obd-bts"):
        return load_obd(name.removeprefix("obd-"))
    if name == "simulator":
        return load_simulated()
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
