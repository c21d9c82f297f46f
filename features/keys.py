"""The Redis key layout of the feature store, in one place (serving never builds keys itself).

``{p}`` is the prefix of one shard (features/shards.py): the plain prefix (``rtrec:``) on one Redis
with one shard, else the shard's hash tag (``{rtrec:0-12}``), which puts all its keys in one slot.

Every key expires: ``key_ttl_s`` (longest window + allowed lateness) after its last write, the
dedupe marks after ``dedupe_window_s`` (``RTREC_DEDUPE_WINDOW_S``) and session lists after the
session gap.

| key | type | content |
|---|---|---|
| ``{p}wm`` | string | watermark: newest event time applied (never beyond the writer's event-time bound) |
| ``{p}seen:{event_id}`` | string | the event was applied (idempotency against a producer that sent it twice, and for events written without Kafka offsets), TTL ``dedupe_window_s`` |
| ``{p}offsets`` | hash | ``{topic}:{partition}`` → next Kafka offset to apply: events below it were applied (written by the call that applied them) |
| ``{p}w:u:{user}<US>{action}`` / ``{p}w:i:{item}<US>{action}`` / ``{p}w:g:<US>{action}`` | string | the window counts of one action of a user, an item, the stream: every window's ring as binary ``uint32`` words (features/windows.py ``RingLayout``; ``<US>``: the byte 0x1F) |
| ``{p}w:uc:{user}<US>{category}<US>{action}`` | string | the user's counts of one item category, the ``user_category_window``'s ring only, for the ``user_category_actions`` (impression, click) |
| ``{p}v:i:{item}`` | string | the item's ranking vector, what ranking reads per candidate in one MGET: the rings of the ``item_vector_actions`` (impression, click), then its trending log-score (features/windows.py ``VectorLayout``), written with the rings |
| ``{p}actions`` | set | every action counted (the rings a reader of all counts asks for) |
| ``{p}c:u:{user}`` | hash | ``last_ts``: the user's last positive action (sessions) |
| ``{p}recent:{user}`` | list | last items the user acted on, newest first |
| ``{p}acted:{user}`` | sorted set | item → time of the user's last positive action on it: the ``acted_items`` latest (up to twice that between trims), which serving never recommends again |
| ``{p}sess:{user}`` | list | items acted on in the current session, oldest first |
| ``{p}cov:{item}`` | sorted set | item → times co-visited with it (by one user within ``covisit_window`` positive actions); the ``covisit_keep`` most co-visited kept |
| ``{p}covsum:{user}`` | sorted set | item → minus the sum of its co-visits with the user's last ``covisit_query`` items, kept by serving's recall (``covisited.lua``) for ``covisit_sums_ttl_ms`` so that the ranking feature of the same request reads it (``covisits.lua``) instead of summing again |
| ``{p}trending`` / ``{p}popular`` | sorted set | item → log of its forward-decayed action count |
| ``{p}items`` | hash | the item catalogue: item → category (``""`` if none known) |
| ``{p}items:log`` | sorted set | item → sequence number of the write that added or changed its entry |
| ``{p}items:seq`` | string | the last sequence number taken |
"""

from __future__ import annotations


def ring(prefix: str, kind: str, entity_id: str, action: str) -> str:
    """Key of the window counts of one action of a user (``kind="u"``), an item (``"i"``), the
    stream (``"g"``, ``entity_id`` ``""``) or a (user, category) pair (``"uc"``, ``entity_id``
    :func:`user_category`); ``apply_events.lua`` builds them so."""
    return f"{prefix}w:{kind}:{entity_id}\x1f{action}"


def item_vector(prefix: str, item_id: str) -> str:
    """Key of an item's ranking vector (``apply_events.lua`` builds them so)."""
    return f"{prefix}v:i:{item_id}"


def user_category(user_id: str, category: str) -> str:
    """The entity of a user's counts of one item category (the byte 0x1F between)."""
    return f"{user_id}\x1f{category}"


def actions(prefix: str) -> str:
    return f"{prefix}actions"


def user_state(prefix: str, user_id: str) -> str:
    """Hash of a user's ``last_ts`` (when the session was last extended)."""
    return f"{prefix}c:u:{user_id}"


def recent(prefix: str, user_id: str) -> str:
    return f"{prefix}recent:{user_id}"


def acted(prefix: str, user_id: str) -> str:
    return f"{prefix}acted:{user_id}"


def session(prefix: str, user_id: str) -> str:
    return f"{prefix}sess:{user_id}"


def covisits(prefix: str, item_id: str) -> str:
    return f"{prefix}cov:{item_id}"


def covisit_sums(prefix: str, user_id: str) -> str:
    return f"{prefix}covsum:{user_id}"


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
