"""Per-slot configuration of the embedding tables, as typed dataclasses (TorchRec style).

One :class:`EmbeddingConfig` per slot says how its rows look (``dim``, ``initializer``), learn
(``optimizer``), enter (``admit_after`` sightings) and leave (``expire_after_s`` of event time).
:data:`DEFAULT_TABLES` is the model's configuration in one place; override it with JSON (see
:func:`tables_from_json`), e.g. from a setting.

>>> by_name = {t.name: t for t in DEFAULT_TABLES}
>>> by_name["item_id"].slot, by_name["item_id"].dim, by_name["item_id"].optimizer.name
(2, 32, 'adagrad')
>>> tables_from_json(tables_to_json(DEFAULT_TABLES)) == DEFAULT_TABLES
True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Sequence

from features.ids import MAX_SLOT
from param_server.initializers import AnyInitializer, Uniform, initializer_from_dict
from param_server.optimizers import Adagrad, AnyOptimizer, optimizer_from_dict

__all__ = ["EmbeddingConfig", "DEFAULT_TABLES", "tables_to_json", "tables_from_json"]

DAY_S = 86_400.0


@dataclass(frozen=True)
class EmbeddingConfig:
    """How one slot's embedding table behaves.

    Attributes:
        name: the slot's name in the model (``user_id``, ``item_id`` ...).
        slot: the slot number in the high bits of its feature IDs (see ``features.ids``).
        dim: floats per row.
        initializer: start value of an admitted row (a function of the ID).
        optimizer: sparse optimizer applied on push.
        admit_after: sightings (pushed occurrences) before an ID gets a row; 1 = at once.
        expire_after_s: evict a row not updated for this many seconds of event time; None = never.
        hash_buckets: fold every ID of the slot into this many shared rows
            (:mod:`param_server.hashing`; the ``hashed`` baseline of ``rtrec eval``); None = one row per ID.
    """

    name: str
    slot: int
    dim: int = 32
    initializer: AnyInitializer = field(default_factory=Uniform)
    optimizer: AnyOptimizer = field(default_factory=Adagrad)
    admit_after: int = 1
    expire_after_s: float | None = None
    hash_buckets: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.slot <= MAX_SLOT:
            raise ValueError(f"{self.name}: slot must be in [0, {MAX_SLOT}], got {self.slot}")
        if self.dim < 1:
            raise ValueError(f"{self.name}: dim must be >= 1, got {self.dim}")
        if self.admit_after < 1:
            raise ValueError(f"{self.name}: admit_after must be >= 1, got {self.admit_after}")
        if self.expire_after_s is not None and self.expire_after_s <= 0:
            raise ValueError(f"{self.name}: expire_after_s must be > 0, got {self.expire_after_s}")
        if self.hash_buckets is not None and self.hash_buckets < 1:
            raise ValueError(f"{self.name}: hash_buckets must be >= 1, got {self.hash_buckets}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["initializer"] = {"name": self.initializer.name, **asdict(self.initializer)}
        out["optimizer"] = {"name": self.optimizer.name, **asdict(self.optimizer)}
        return out

    @classmethod
    def from_dict(cls, spec: dict) -> "EmbeddingConfig":
        spec = dict(spec)
        if "initializer" in spec:
            spec["initializer"] = initializer_from_dict(spec["initializer"])
        if "optimizer" in spec:
            spec["optimizer"] = optimizer_from_dict(spec["optimizer"])
        return cls(**spec)


DEFAULT_TABLES: tuple[EmbeddingConfig, ...] = (
    # Users: many appear once; admit on the second sighting, forget after 30 days of silence.
    EmbeddingConfig("user_id", slot=1, admit_after=2, expire_after_s=30 * DAY_S),
    EmbeddingConfig("item_id", slot=2, expire_after_s=30 * DAY_S),
    EmbeddingConfig("category", slot=3),
    # Context values (device, geo, hour ...), hashed as "key=value" into one slot.
    EmbeddingConfig("context", slot=4, expire_after_s=30 * DAY_S),
)


def validate_tables(tables: Sequence[EmbeddingConfig]) -> None:
    """Raise ValueError unless names and slots are unique."""
    names = [t.name for t in tables]
    slots = [t.slot for t in tables]
    if len(set(names)) != len(names) or len(set(slots)) != len(slots):
        raise ValueError(f"table names and slots must be unique, got {list(zip(names, slots))}")


def tables_to_json(tables: Sequence[EmbeddingConfig]) -> str:
    return json.dumps([t.to_dict() for t in tables], sort_keys=True)


def tables_from_json(text: str) -> tuple[EmbeddingConfig, ...]:
    """Parse a JSON list of table specs, e.g. ``[{"name": "item_id", "slot": 2, "dim": 32}]``."""
    specs = json.loads(text)
    if not isinstance(specs, list):
        raise ValueError("table configuration must be a JSON list of objects")
    tables = tuple(EmbeddingConfig.from_dict(spec) for spec in specs)
    validate_tables(tables)
    return tables
