"""How each API call's results travel as frame arguments and arrays (shared by server and client).

>>> delta = Delta(3, {"item_id": TableDelta(np.array([1], np.uint64), np.ones((1, 2), np.float32),
...                                         np.empty(0, np.uint64))})
>>> back = delta_from_wire(*delta_to_wire(delta))
>>> back.version, back.tables["item_id"].rows.tolist(), back.tables["item_id"].full
(3, [[1.0, 1.0]], False)
"""

from __future__ import annotations

import numpy as np

from param_server.protocol import ProtocolError
from param_server.store import Delta
from param_server.table import TableDelta

__all__ = ["delta_to_wire", "delta_from_wire", "require_array", "offsets_from_wire"]


def delta_to_wire(delta: Delta) -> tuple[dict, dict[str, np.ndarray]]:
    args = {"version": delta.version, "full": {name: d.full for name, d in delta.tables.items()}}
    arrays = {}
    for name, table_delta in delta.tables.items():
        arrays[f"{name}.ids"] = table_delta.ids
        arrays[f"{name}.rows"] = table_delta.rows
        arrays[f"{name}.evicted"] = table_delta.evicted
    return args, arrays


def delta_from_wire(args: dict, arrays: dict[str, np.ndarray]) -> Delta:
    full = args.get("full", {})
    tables = {name: TableDelta(arrays[f"{name}.ids"], arrays[f"{name}.rows"], arrays[f"{name}.evicted"],
                               bool(is_full))
              for name, is_full in full.items()}
    return Delta(int(args["version"]), tables)


def require_array(arrays: dict[str, np.ndarray], name: str, dtype: str, ndim: int) -> np.ndarray:
    """The named array of a request, checked for dtype and rank (ProtocolError otherwise)."""
    array = arrays.get(name)
    if array is None:
        raise ProtocolError(f"request lacks array {name!r}")
    if array.dtype != np.dtype(dtype) or array.ndim != ndim:
        raise ProtocolError(f"array {name!r} must be {ndim}-d {dtype}, got {array.ndim}-d {array.dtype}")
    return array


def offsets_from_wire(value: object) -> dict[str, dict[int, int]] | None:
    """Kafka offsets from JSON (partition keys arrive as strings)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ProtocolError("offsets must be an object of topic -> {partition: offset}")
    try:
        return {str(t): {int(p): int(o) for p, o in parts.items()} for t, parts in value.items()}
    except (TypeError, ValueError):
        raise ProtocolError("offsets must hold integer partitions and offsets") from None
