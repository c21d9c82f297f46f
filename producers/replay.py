"""``rtrec replay``: read a logged event file (CSV or JSONL), validate each row, and re-emit the
events in timestamp order at their original pace, ``speed`` times faster, or as fast as possible.

Malformed rows never stop a replay: each is counted under its reason and skipped. When the file has
no event_id column, the id is ``<file name>:<line>``, so replaying the same file twice is
idempotent for the feature store (it deduplicates by event_id).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from producers.pacing import Pacer
from rtrec.events import Event, Invalid, validate_fields

log = logging.getLogger(__name__)

FIELDS = ("event_id", "user_id", "item_id", "action", "ts", "value", "request_id")


def parse_columns(spec: str | None) -> dict[str, str]:
    """``"user_id=userId,ts=timestamp"`` → ``{"user_id": "userId", "ts": "timestamp"}`` (event field → column).

    >>> parse_columns("user_id=userId,item_id=movieId")
    {'user_id': 'userId', 'item_id': 'movieId'}
    """
    mapping: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, sep, column = part.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not column or name not in (*FIELDS, "context", "item"):
            raise ValueError(f"bad column mapping {part!r}: expected FIELD=COLUMN with FIELD in {FIELDS}")
        mapping[name] = column
    return mapping


def read_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """Yield ``(line number, row)`` from a CSV/TSV (header row) or JSONL file.

    A row that cannot be read is yielded as a string: the reason it is malformed.
    """
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with path.open("rb") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):
                    yield line_no, "not JSON"
                    continue
                yield line_no, row if isinstance(row, dict) else "not a JSON object"
        return
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        sample = f.read(4096)
        f.seek(0)
        delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
        reader = csv.DictReader(f, delimiter=delimiter)
        for row in reader:
            yield reader.line_num, row


def row_to_event(row: dict, columns: dict[str, str], default_action: str, event_id: str) -> Event | Invalid:
    """Map one row to an event through ``columns``; values from CSV are strings and get converted."""
    obj: dict = {}
    for name in (*FIELDS, "context", "item"):
        column = columns.get(name, name)
        if column in row and row[column] not in ("", None):
            obj[name] = row[column]
    obj.setdefault("action", default_action)
    obj.setdefault("event_id", event_id)
    for name in ("user_id", "item_id", "event_id", "request_id"):
        if isinstance(obj.get(name), (int, float)) and not isinstance(obj[name], bool):
            obj[name] = str(obj[name])  # numeric IDs in JSONL are IDs, not numbers
    for name in ("ts", "value"):
        if isinstance(obj.get(name), str):
            converted = _to_number(obj[name], is_time=name == "ts")
            if converted is None:
                return Invalid(f"{name} is not a number: {obj[name][:40]!r}")
            obj[name] = converted
    return validate_fields(obj)


def _to_number(text: str, is_time: bool) -> float | None:
    try:
        return float(text)
    except ValueError:
        pass
    if is_time:
        try:
            return datetime.fromisoformat(text.strip()).timestamp()
        except ValueError:
            return None
    return None


@dataclass
class LoadedEvents:
    """Events of a file sorted by ts, and the rows skipped, counted by reason."""

    events: list[Event]
    skipped: Counter = field(default_factory=Counter)


def load_events(path: Path, columns: dict[str, str], default_action: str = "click",
                limit: int | None = None) -> LoadedEvents:
    """Read and validate a whole file, then sort by event time (stable: file order breaks ties).

    The file is held in memory to sort it; at ~200 bytes per event that is fine up to tens of
    millions of rows.
    """
    loaded = LoadedEvents(events=[])
    for line_no, row in read_rows(path):
        result = Invalid(row) if isinstance(row, str) else row_to_event(
            row, columns, default_action, f"{path.name}:{line_no}")
        if isinstance(result, Invalid):
            loaded.skipped[result.reason] += 1
            if sum(loaded.skipped.values()) <= 5:
                log.warning("%s line %d skipped: %s", path, line_no, result.reason)
        else:
            loaded.events.append(result)
            if limit is not None and len(loaded.events) >= limit:
                break
    loaded.events.sort(key=lambda e: e.ts)
    return loaded


def replay(events: Iterable[Event], total: int, send: Callable[[Event], None], speed: float | None,
           should_stop: Callable[[], bool] = lambda: False, progress: bool = True) -> dict:
    """Send events in order; ``speed=None`` is as fast as possible, else pace ``speed`` x real time."""
    start = time.monotonic()
    sent = 0
    pacer: Pacer | None = None
    with tqdm(total=total, unit="ev", disable=not progress, mininterval=0.5, desc="replay") as bar:
        for event in events:
            if should_stop():
                break
            if speed is not None:
                pacer = pacer or Pacer(event.ts, speed)
                while event.ts > pacer.due_ts() and not should_stop():
                    pacer.wait_for(event.ts)
            send(event)
            sent += 1
            if sent % 1000 == 0:
                bar.update(1000)
        bar.update(sent % 1000)
    return {"sent": sent, "seconds": round(time.monotonic() - start, 3)}
