"""Atomic snapshots of a parameter-server shard: one ``.npz`` file, never pickle.

A snapshot holds every array of the store (``np.savez``, loaded with ``allow_pickle=False``) and
its metadata as UTF-8 JSON in a ``uint8`` array named ``__meta__``, so arrays and metadata -- the
version and the Kafka offsets the state reflects -- are one file and change together. It is
written to a temporary file in the same directory, fsynced, then ``os.replace``d into place, so a
reader sees the old snapshot or the new one, never half of one.

Names: ``<dir>/shard-<k>/snapshot-v<version:012d>.npz``; the latest is the highest version.

>>> import tempfile
>>> directory = tempfile.mkdtemp()
>>> path = write_snapshot(directory, ({"a": np.arange(3.0)}, {"version": 7, "shard": 0}))
>>> arrays, meta = read_snapshot(path)
>>> arrays["a"].tolist(), meta["version"], latest_snapshot(directory, shard=0) == path
([0.0, 1.0, 2.0], 7, True)
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["write_snapshot", "read_snapshot", "latest_snapshot", "prune_snapshots"]

log = logging.getLogger(__name__)

META_KEY = "__meta__"
FORMAT = "rtrec-param-server-snapshot/1"
_NAME = re.compile(r"^snapshot-v(\d{12})\.npz$")


def write_snapshot(directory: str | Path, state: tuple[Mapping[str, np.ndarray], dict],
                   keep: int = 3) -> Path:
    """Write ``(arrays, meta)`` atomically under ``directory``; keep the newest ``keep``; returns the path."""
    arrays, meta = state
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved")
    folder = Path(directory) / f"shard-{int(meta.get('shard', 0))}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "format": FORMAT}
    payload = {**arrays, META_KEY: np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    path = folder / f"snapshot-v{int(meta['version']):012d}.npz"
    fd, tmp = tempfile.mkstemp(prefix=".snapshot-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    prune_snapshots(folder, keep)
    return path


def read_snapshot(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Load a snapshot's arrays and metadata; ValueError if it is not a valid snapshot."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ValueError(f"cannot read snapshot {path}: {exc}") from exc
    raw = arrays.pop(META_KEY, None)
    if raw is None:
        raise ValueError(f"{path} has no metadata; not an rtrec snapshot")
    meta = json.loads(raw.tobytes().decode("utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return arrays, meta


def latest_snapshot(directory: str | Path, shard: int) -> Path | None:
    """The newest snapshot of ``shard`` under ``directory``, or None."""
    folder = Path(directory) / f"shard-{shard}"
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if _NAME.match(p.name))
    return found[-1] if found else None


def prune_snapshots(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` snapshots (and stale temporary files) in ``folder``."""
    found = sorted(p for p in folder.iterdir() if _NAME.match(p.name))
    for old in found[: max(len(found) - keep, 0)]:
        old.unlink(missing_ok=True)
        log.info("pruned old snapshot %s", old)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
