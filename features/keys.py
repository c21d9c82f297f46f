"""The Redis key layout of the feature store, in one place (serving never builds keys itself).

Every key expires: ``key_ttl_s`` (longest window + allowed lateness) after its last write, the
dedupe marks after ``dedupe_window_s`` (``RTREC_DEDUPE_WINDOW_S``) and session lists after the
session gap.

| key | type | content |
|---|---|---|
| ``{p}wm`` | string | watermark: newest event time applied (never beyond the writer's event-time bound) |
| ``{p}seen:{event_id}`` | string | the event was applied (idempotency against a producer that sent it twice, and for events written without Kafka offsets), TTL ``dedupe_window_s`` |
| ``{p}offsets`` | hash | ``{topic}:{partition}`` → next Kafka offset to apply: events below it were applied (written by the call that applied them) |
| ``{p}c:u:{user}`` / ``{p}c:i:{item}`` / ``{p}c:g`` | hash | ``{window}:{action}:{slot}`` → ``"{bucket}:{count}"``; ``last_ts``; ``category`` (items) |
| ``{p}c:uc:{user}<US>{category}`` | hash | the user's counters of one item category (``<US>``: the byte 0x1F), in the ``user_category_window`` only |
| ``{p}recent:{user}`` | list | last items the user acted on, newest first |
| ``{p}sess:{user}`` | list | items acted on in the current session, oldest first |
| ``{p}cov:{item}`` | sorted set | item → times co-visited with it (by one user within ``covisit_window`` positive actions); the ``covisit_keep`` most co-visited kept |
| ``{p}trending`` / ``{p}popular`` | sorted set | item → log of its forward-decayed action count |
| ``{p}items`` | hash | the item catalogue: item → category (``""`` if none known) |
| ``{p}items:log`` | sorted set | item → sequence number of the write that added or changed its entry |
| ``{p}items:seq`` | string | the last sequence number taken |
"""

from __future__ import annotations


def counters(prefix: str, kind: str, entity_id: str) -> str:
    """Key of the window counters of a user (``kind="u"``), an item (``"i"``) or the whole stream (``"g"``)."""
    return f"{prefix}c:g" if kind == "g" else f"{prefix}c:{kind}:{entity_id}"


def user_category(prefix: str, user_id: str, category: str) -> str:
    """Key of a user's window counters of one item category (``apply_events.lua`` builds it so)."""
    return f"{prefix}c:uc:{user_id}\x1f{category}"


def recent(prefix: str, user_id: str) -> str:
    return f"{prefix}recent:{user_id}"


def session(prefix: str, user_id: str) -> str:
    return f"{prefix}sess:{user_id}"


def covisits(prefix: str, item_id: str) -> str:
    return f"{prefix}cov:{item_id}"


def ranking(prefix: str, name: str) -> str:
    return f"{prefix}{name}"


def applied_offsets(prefix: str) -> str:
    """Hash of the next Kafka offset to apply per ``topic:partition`` (``apply_events.lua``)."""
    return f"{prefix}offsets"


def watermark(prefix: str) -> str:
    return f"{prefix}wm"


def catalog(prefix: str) -> str:
    return f"{prefix}items"


def catalog_log(prefix: str) -> str:
    return f"{prefix}items:log"


def catalog_seq(prefix: str) -> str:
    return f"{prefix}items:seq"
