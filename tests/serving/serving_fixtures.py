"""Helpers of the serving tests: a parameter store trained on simulated clicks, and its events."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from param_server.store import ParamStore
from producers.simulator import ClickSimulator, SimulatorConfig
from rtrec.events import Event
from rtrec.recipe.examples import ExampleBatch
from rtrec.recipe.trainer import OnlineTrainer, TrainerConfig

T0 = 1.7e9
SIM = SimulatorConfig(users=40, items=150, categories=5, seed=3, shift_fraction=0.0, trending_items=0)


@dataclass
class Trained:
    """A store, the trainer that wrote it, and the simulated events it was trained on."""

    store: ParamStore
    trainer: OnlineTrainer
    events: list[Event]


def labelled_batches(events: list[Event], size: int = 256) -> list[ExampleBatch]:
    """Impressions labelled 1 when a click on the same request and item follows, in batches."""
    clicked = {(e.request_id, e.item_id) for e in events if e.action == "click"}
    pairs = [(e, float((e.request_id, e.item_id) in clicked)) for e in events if e.action == "impression"]
    return [ExampleBatch.from_impressions(pairs[lo:lo + size]) for lo in range(0, len(pairs), size)]


def train(trainer: OnlineTrainer, events: list[Event]) -> None:
    for batch in labelled_batches(events):
        trainer.train_many(batch)
    trainer.sync_dense()


def make_trained(numeric_items: bool = False) -> Trained:
    """``numeric_items``: item IDs "42" instead of "i42" (names decodable from feature IDs)."""
    store = ParamStore()
    trainer = OnlineTrainer(store, config=TrainerConfig(dense_sync_every=5), seed=0)
    events = ClickSimulator(SIM, run_id="serving").requests(400, T0, T0 + 600.0)
    if numeric_items:
        events = [replace(e, item_id=e.item_id.lstrip("i")) for e in events]
    train(trainer, events)
    return Trained(store, trainer, events)


def clicks_of(user: str, items: list[str], ts: float, category: str = "c0") -> list[Event]:
    """Impression + click events of ``user`` on ``items`` (one request each)."""
    out = []
    for n, item in enumerate(items):
        req = f"extra-{user}-{n}-{ts}"
        for action, dt in (("impression", 0.0), ("click", 1.0)):
            out.append(Event(f"{req}-{action}", user, item, action, ts + n + dt, request_id=req,
                             context={"device": "ios"}, item={"category": category}))
    return out


def item_rows(store: ParamStore, name: str = "item_id") -> tuple[np.ndarray, np.ndarray]:
    delta = store.tables[name].delta(0)
    return delta.ids, delta.rows


def write_features(client: object, events: list[Event], prefix: str, **settings: object) -> "FeatureConfig":
    """The events' real-time features, in time order, under a fresh key ``prefix`` of the test Redis
    (``settings``: other FeatureConfig fields); returns the feature config that reads them."""
    from features.config import FeatureConfig
    from features.writer import FeatureWriter

    config = FeatureConfig(prefix=prefix, **settings)  # type: ignore[arg-type]
    writer = FeatureWriter(client, config)  # type: ignore[arg-type]
    ordered = sorted(events, key=lambda e: e.ts)
    for lo in range(0, len(ordered), 500):
        writer.write_many(ordered[lo:lo + 500])
    return config
