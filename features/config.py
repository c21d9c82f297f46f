"""What the feature store computes, as one typed configuration (defaults suit a live stream)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from features.shards import ShardLayout
from features.windows import DEFAULT_WINDOWS, WindowSpec
from rtrec.settings import DEFAULT_DEDUPE_WINDOW_S, DEFAULT_MAX_EVENT_AHEAD_S

#: Actions that show interest: they feed recent items, sessions, trending and popularity.
POSITIVE_ACTIONS = frozenset({"click", "like", "share", "purchase", "rating"})


@dataclass(frozen=True)
class FeatureConfig:
    """Windows, list lengths, decay constants and TTLs of the real-time features."""

    windows: tuple[WindowSpec, ...] = DEFAULT_WINDOWS
    recent_items: int = 50  # last N items a user acted on
    session_gap_s: float = 1800.0  # a pause longer than this starts a new session
    trending_tau_s: float = 900.0  # decay time of the trending score (velocity)
    popular_tau_s: float = 86400.0  # decay time of popularity
    ranking_size: int = 10_000  # items kept in the trending / popular rankings
    covisit_window: int = 10  # a positive action co-visits the user's last N positive items
    covisit_keep: int = 100  # co-visited items kept per item, the most co-visited first (up to 2x between trims)
    acted_items: int = 1000  # items kept per user that serving never recommends again, latest first (up to 2x between trims; 0: none)
    user_category_window: str = "24h"  # the window of the (user, category) counters (none if not a window)
    user_category_actions: tuple[str, ...] = ("impression", "click")  # the actions they count: what features read
    item_vector_actions: tuple[str, ...] = ("impression", "click")  # rings kept in each item's ranking vector (keys.item_vector; () : none)
    covisit_query: int = 5  # the ranking feature sums co-visits with the user's last N items
    covisit_sums_ttl_ms: int = 2000  # how long serving's recall keeps a user's co-visit sums for its ranking reads
    catalog_size: int = 1_000_000  # items kept in the catalogue (least recently changed leave first)
    ctr_prior_strength: float = 20.0  # pseudo-impressions of the smoothing prior
    lateness_s: float = 3600.0  # how late an event may arrive and still be counted in its window
    dedupe_window_s: int = DEFAULT_DEDUPE_WINDOW_S  # how long an event_id is remembered (0: not at all)
    max_event_ahead_s: float = DEFAULT_MAX_EVENT_AHEAD_S  # later event times are refused (wall clock)
    prefix: str = "rtrec:"
    positive_actions: frozenset[str] = field(default=POSITIVE_ACTIONS)
    shards: int = 1  # shards by user (features/shards.py); writers and readers must agree
    hash_tags: bool = False  # tag the keys of even one shard (a Redis Cluster needs it)

    @property
    def layout(self) -> ShardLayout:
        """Where each user's features live: the shards' prefixes (features/shards.py)."""
        return ShardLayout(self.prefix, self.shards, self.hash_tags)

    @classmethod
    def from_settings(cls, settings: Any, redis_url: str | None = None) -> "FeatureConfig":
        """The configuration every process of a deployment derives alike from its settings: the
        shard count (``RTREC_FEATURE_SHARDS``), hash tags where the Redis URL (``redis_url``, else
        the settings') names a cluster, the event-time bound, the dedupe window and how many acted-on
        items a user keeps (``RTREC_ACTED_ITEMS``)."""
        from features.client import is_cluster_url

        return cls(shards=settings.feature_shards, hash_tags=is_cluster_url(redis_url or settings.redis_url),
                   max_event_ahead_s=settings.max_event_ahead_s, dedupe_window_s=settings.dedupe_window_s,
                   acted_items=settings.acted_items)

    @property
    def key_ttl_s(self) -> int:
        """TTL of every key but sessions: the longest window plus the allowed lateness."""
        return int(max(w.seconds for w in self.windows) + self.lateness_s)

    @property
    def dedupe_ttl_s(self) -> int:
        """How long an event_id is remembered (``dedupe_window_s``): the same event sent again within
        it is skipped. Events read from Kafka are also, and first, deduplicated by their offsets,
        which cost no memory per event; the window is for what offsets cannot tell (a producer
        that sent an event twice) and for events written without offsets."""
        return self.dedupe_window_s
