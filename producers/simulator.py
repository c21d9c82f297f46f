"""A click simulator with a known ground truth, so that adaptation can be measured.

The world: items belong to categories and have a Zipf-skewed popularity and a quality; every user
has a taste (a distribution over categories). A request shows a user ``k`` items drawn by
popularity (Gumbel top-k, no repeats); the user clicks item ``i`` with probability

    p(click | u, i, t) = min(0.95, base_ctr * C * taste_u(t)[cat_i] * quality_i * boost_i(t))

where ``C`` is the number of categories (so an average taste gives ``base_ctr``). Clicks may be
followed by a like, share or purchase. Two kinds of change happen at known times: a fraction of
users switch to a new taste at ``shift_at_s`` of event time, and a few items start trending (their
exposure and appeal are multiplied by ``trend_boost``) at known times.

>>> sim = ClickSimulator(SimulatorConfig(users=50, items=200, seed=1), run_id="doc")
>>> events = sim.requests(20, t_start=1000.0, t_end=1010.0)
>>> sum(e.action == "impression" for e in events)
200
>>> all(a.ts <= b.ts for a, b in zip(events, events[1:]))
True
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from rtrec.events import Event

__all__ = ["SimulatorConfig", "ClickSimulator"]

DEVICES = np.array(["ios", "android", "web"])
FOLLOW_UPS = (("like", 0.25), ("share", 0.05), ("purchase", 0.03))


@dataclass(frozen=True)
class SimulatorConfig:
    """The simulated world; every field has a default that gives a lively but learnable stream."""

    users: int = 2_000
    items: int = 5_000
    categories: int = 20
    seed: int = 0
    impressions_per_request: int = 10
    popularity_zipf: float = 1.05
    taste_concentration: float = 0.2  # Dirichlet alpha: small = users like few categories
    base_ctr: float = 0.08
    shift_fraction: float = 0.2  # users whose taste changes once
    shift_at_s: float = 120.0  # event seconds after the start when they change
    trending_items: int = 10
    trend_every_s: float = 60.0  # one trending item starts every this many seconds
    trend_boost: float = 8.0
    click_delay_s: float = 2.0  # mean seconds from impression to click


class ClickSimulator:
    """Generates time-ordered impressions and the actions that follow, from a ground truth."""

    def __init__(self, config: SimulatorConfig, run_id: str | None = None) -> None:
        if config.impressions_per_request > config.items:
            raise ValueError("impressions_per_request must not exceed items")
        self.config = c = config
        self.run_id = run_id or uuid.uuid4().hex[:8]
        rng = np.random.default_rng(c.seed)
        self.category = rng.integers(0, c.categories, size=c.items)
        self.log_popularity = -c.popularity_zipf * np.log1p(rng.permutation(c.items)).astype(np.float64)
        self.quality = np.exp(rng.normal(0.0, 0.3, size=c.items))
        self.user_activity = 1.0 / np.arange(1, c.users + 1) ** 0.8
        self.user_activity /= self.user_activity.sum()
        self.taste_before = rng.dirichlet([c.taste_concentration] * c.categories, size=c.users)
        self.taste_after = self.taste_before.copy()
        self.shifted_users = rng.choice(c.users, size=int(c.shift_fraction * c.users), replace=False)
        self.taste_after[self.shifted_users] = rng.dirichlet(
            [c.taste_concentration] * c.categories, size=len(self.shifted_users)
        )
        self.trending = rng.choice(c.items, size=min(c.trending_items, c.items), replace=False)
        self.trend_start_s = c.trend_every_s * np.arange(1, len(self.trending) + 1)
        self._rng = rng
        self._start: float | None = None
        self._n_events = 0
        self._n_requests = 0
        self._carry = 0.0

    # -- ground truth -------------------------------------------------------------------------
    def taste(self, users: np.ndarray, t_rel: float) -> np.ndarray:
        """Each user's category distribution at ``t_rel`` seconds after the start."""
        return self.taste_after[users] if t_rel >= self.config.shift_at_s else self.taste_before[users]

    def boost(self, t_rel: float) -> np.ndarray:
        """Per-item multiplier of exposure and appeal at ``t_rel``: ``trend_boost`` for items trending then."""
        b = np.ones(self.config.items)
        b[self.trending[self.trend_start_s <= t_rel]] = self.config.trend_boost
        return b

    def click_prob(self, users: np.ndarray, items: np.ndarray, t_rel: float) -> np.ndarray:
        """p(click) for aligned arrays of users and items (see the module docstring)."""
        c = self.config
        taste = self.taste(users, t_rel)[np.arange(len(users)), self.category[items]]
        p = c.base_ctr * c.categories * taste * self.quality[items] * self.boost(t_rel)[items]
        return np.minimum(p, 0.95)

    def best_items(self, user: int, t_rel: float, k: int = 10) -> np.ndarray:
        """The ``k`` items this user is most likely to click at ``t_rel`` (the oracle ranking)."""
        users = np.full(self.config.items, user)
        p = self.click_prob(users, np.arange(self.config.items), t_rel)
        return np.argsort(-p, kind="stable")[:k]

    # -- stream -------------------------------------------------------------------------------
    def requests(self, n: int, t_start: float, t_end: float) -> list[Event]:
        """``n`` requests spread uniformly over ``[t_start, t_end)`` with their follow-up actions.

        The first call fixes the simulation's start (t = 0 of the ground truth). Events come back
        sorted by ``ts``; follow-ups may lie slightly after ``t_end``.
        """
        if self._start is None:
            self._start = t_start
        c, rng = self.config, self._rng
        times = np.sort(rng.uniform(t_start, t_end, size=n))
        users = rng.choice(c.users, size=n, p=self.user_activity)
        t_rel = float(np.mean(times)) - self._start
        shown = self._show(n, t_rel)
        req_users = np.repeat(users, c.impressions_per_request)
        req_times = np.repeat(times, c.impressions_per_request)
        items = shown.ravel()
        clicked = rng.random(len(items)) < self.click_prob(req_users, items, t_rel)
        req_ids = np.repeat(np.arange(self._n_requests, self._n_requests + n), c.impressions_per_request)
        self._n_requests += n
        devices = DEVICES[rng.integers(0, len(DEVICES), size=n)].repeat(c.impressions_per_request)
        rows = [(t, u, i, "impression", None, r, d) for t, u, i, r, d in
                zip(req_times, req_users, items, req_ids, devices)]
        rows += self._follow_ups(req_times[clicked], req_users[clicked], items[clicked],
                                 req_ids[clicked], devices[clicked])
        rows.sort(key=lambda row: row[0])
        return [self._event(*row) for row in rows]

    def traffic(self, t_start: float, t_end: float, requests_per_s: float) -> list[Event]:
        """``requests_per_s`` requests per second over ``[t_start, t_end)``, at random times within it.

        The count is exact over consecutive calls (the fraction carries over), so a simulation
        runs at the rate it was asked for rather than within Poisson noise of it.
        """
        expected = requests_per_s * (t_end - t_start) + self._carry
        n = int(expected)
        self._carry = expected - n
        return self.requests(n, t_start, t_end) if n else []

    def _show(self, n: int, t_rel: float) -> np.ndarray:
        """Items shown per request: top-k of log-popularity plus Gumbel noise (sampling without repeats)."""
        c, rng = self.config, self._rng
        logits = self.log_popularity + np.log(self.boost(t_rel))
        out = np.empty((n, c.impressions_per_request), dtype=np.int64)
        chunk = max(1, 2_000_000 // c.items)  # bounds the n x items noise matrix
        for lo in range(0, n, chunk):
            scores = logits + rng.gumbel(size=(min(chunk, n - lo), c.items))
            out[lo:lo + chunk] = np.argpartition(-scores, c.impressions_per_request - 1, axis=1)[
                :, : c.impressions_per_request]
        return out

    def _follow_ups(self, times, users, items, req_ids, devices) -> list[tuple]:
        rng = self._rng
        click_times = times + rng.exponential(self.config.click_delay_s, size=len(times))
        dwell = rng.exponential(30.0, size=len(times))
        rows = [(t, u, i, "click", w, r, d) for t, u, i, w, r, d in
                zip(click_times, users, items, dwell, req_ids, devices)]
        for action, prob in FOLLOW_UPS:
            mask = rng.random(len(times)) < prob
            later = click_times[mask] + rng.exponential(10.0, size=int(mask.sum()))
            rows += [(t, u, i, action, None, r, d) for t, u, i, r, d in
                     zip(later, users[mask], items[mask], req_ids[mask], devices[mask])]
        return rows

    def _event(self, ts, user, item, action, value, req, device) -> Event:
        self._n_events += 1
        return Event(
            event_id=f"{self.run_id}-{self._n_events}",
            user_id=f"u{user}",
            item_id=f"i{item}",
            action=action,
            ts=float(ts),
            value=None if value is None else round(float(value), 3),
            request_id=f"{self.run_id}-r{req}",
            context={"device": str(device)},
            item={"category": f"c{self.category[item]}"},
        )

    def events_per_request(self, sample: int = 2_000) -> float:
        """Expected events per request (impressions + follow-ups), estimated on a private copy."""
        probe = ClickSimulator(self.config, run_id="probe")
        return len(probe.requests(sample, 0.0, 1.0)) / sample
