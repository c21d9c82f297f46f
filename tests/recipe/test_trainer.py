"""The online trainer against the in-process ParamStore: one pull, one push, learning on simulated clicks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from features.ids import feature_ids
from param_server.config import DEFAULT_TABLES
from param_server.optimizers import Adagrad
from param_server.store import ParamStore
from producers.simulator import ClickSimulator, SimulatorConfig
from rtrec.events import Event
from rtrec.recipe.model import ModelConfig
from rtrec.recipe.examples import ExampleBatch, ModelSlots, RecentItems
from rtrec.recipe.negatives import ItemFrequency, NegativeSampler, add_sampled_negatives
from rtrec.recipe.trainer import OnlineTrainer, TrainerConfig, binary_auc

SLOTS = ModelSlots.from_tables()


class RecordingStore:
    """A ParamStore that remembers every sparse call."""

    def __init__(self, store: ParamStore) -> None:
        self.store = store
        self.pulls: list[np.ndarray] = []
        self.pushes: list[tuple[np.ndarray, np.ndarray]] = []

    def pull_many(self, ids: np.ndarray) -> np.ndarray:
        self.pulls.append(ids.copy())
        return self.store.pull_many(ids)

    def push_many(self, ids: np.ndarray, grads: np.ndarray, **kwargs: Any) -> int:
        self.pushes.append((ids.copy(), grads.copy()))
        return self.store.push_many(ids, grads, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def _impressions(n: int, users: int = 7, items: int = 11, seed: int = 0) -> ExampleBatch:
    rng = np.random.default_rng(seed)
    pairs = []
    for k in range(n):
        item = int(rng.integers(items))
        event = Event(f"e{k}", f"u{rng.integers(users)}", f"i{item}", "impression", 100.0 + k,
                      request_id=f"r{k}", context={"device": ["ios", "web"][k % 2]},
                      item={"category": f"c{item % 3}"})
        pairs.append((event, float(item % 3 == 0)))
    recent = [[f"i{(k + j) % items}" for j in range(k % 4)] for k in range(n)]
    return ExampleBatch.from_impressions(pairs, recent=recent)


def _batch_ids(batch: ExampleBatch) -> set[int]:
    ids = batch.feature_ids(SLOTS)
    parts = [ids.user, ids.item, ids.category[ids.category_valid], ids.context[ids.context_valid],
             ids.recent[ids.recent_valid]]
    return set(np.concatenate([p.ravel() for p in parts]).tolist())


def test_one_pull_and_one_push_touch_only_the_batch_ids() -> None:
    store = ParamStore()
    bystanders = _impressions(64, users=50, items=50, seed=9)
    bystanders = bystanders.take(np.isin(bystanders.items, [f"i{j}" for j in range(20, 50)]))
    bystander_ids = np.array(sorted(_batch_ids(bystanders) - _batch_ids(_impressions(64))), dtype=np.uint64)
    store.push_many(bystander_ids, np.ones((bystander_ids.size, 32), dtype=np.float32), ts=1.0)
    store.push_many(bystander_ids, np.ones((bystander_ids.size, 32), dtype=np.float32), ts=1.0)  # admit users
    before = store.pull_many(bystander_ids)
    recording = RecordingStore(store)
    trainer = OnlineTrainer(recording)
    since = store.version
    batch = _impressions(64)

    trainer.train_many(batch)

    assert len(recording.pulls) == 1 and len(recording.pushes) == 1
    pushed, grads = recording.pushes[0]
    assert np.unique(pushed).size == pushed.size, "gradients must be summed per unique ID"
    assert set(pushed.tolist()) == _batch_ids(batch) == set(recording.pulls[0].tolist())
    assert grads.shape == (pushed.size, 32) and np.abs(grads).sum() > 0
    changed = {i for delta in store.delta(since).tables.values() for i in delta.ids.tolist()}
    assert changed <= _batch_ids(batch)
    assert np.array_equal(store.pull_many(bystander_ids), before)


def test_a_second_identical_batch_has_lower_loss() -> None:
    trainer = OnlineTrainer(ParamStore())
    batch = _impressions(256)
    first = trainer.train_many(batch)
    second = trainer.train_many(batch)
    assert second.loss < first.loss
    assert first.examples == 256 and first.seconds > 0 and first.unique_ids > 0


def test_unknown_user_and_item_score_and_embed_without_crashing() -> None:
    trainer = OnlineTrainer(ParamStore())
    trainer.train_many(_impressions(64))
    batch = ExampleBatch.for_scoring(["never-seen", "u1"], ["never-seen-item", "i1"],
                                     contexts=[{"device": "tv"}, None], recent=[["nope"], []])
    scores = trainer.score_many(batch)
    assert scores.shape == (2, 3) and np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    users = trainer.embed_users(["never-seen", "u1"])
    items = trainer.embed_items(["never-seen-item"], [None])
    assert users.shape == (2, 32) and items.shape == (1, 32)
    assert np.isfinite(users).all() and np.isfinite(items).all()
    assert trainer.embed_users([]).shape == (0, 32)


def test_score_many_does_not_write_to_the_param_server() -> None:
    store = ParamStore()
    trainer = OnlineTrainer(store)
    version = store.version
    trainer.score_many(_impressions(16))
    trainer.embed_items(["i1", "i2"], ["c1", "c2"])
    assert store.version == version


def test_caller_mistakes_are_value_errors() -> None:
    trainer = OnlineTrainer(ParamStore())
    batch = _impressions(8)
    with pytest.raises(ValueError, match="empty"):
        trainer.train_many(batch.take(np.zeros(8, dtype=bool)))
    with pytest.raises(ValueError, match="heads"):
        OnlineTrainer(ParamStore(), ModelConfig(heads=("click",))).train_many(batch)
    with pytest.raises(ValueError, match="dense"):
        trainer.train_many(batch.with_dense(np.zeros((8, 3))))
    with pytest.raises(ValueError, match="share one dim"):
        ModelSlots.from_tables([replace(t, dim=8) if t.name == "category" else t for t in DEFAULT_TABLES])


def test_dense_features_change_the_scores() -> None:
    trainer = OnlineTrainer(ParamStore())
    batch = _impressions(8)
    plain = trainer.score_many(batch)
    with_dense = trainer.score_many(batch.with_dense(np.full((8, trainer.model.config.n_dense), 2.0)))
    assert not np.allclose(plain, with_dense)


def test_a_second_worker_adopts_the_servers_dense_weights_and_gossip_mixes_them() -> None:
    store = ParamStore()
    first = OnlineTrainer(store, seed=1, config=TrainerConfig(dense_sync_every=1, dense_mix=0.5))
    second = OnlineTrainer(store, seed=2, config=TrainerConfig(dense_sync_every=1, dense_mix=0.5))
    assert all(np.array_equal(v, second.model.dense_arrays()[k]) for k, v in first.model.dense_arrays().items())

    first.train_many(_impressions(32, seed=1))  # syncs: nobody else pushed, so first pushes as is
    pushed_by_first = store.pull_dense(first.model.dense_names()).tensors
    assert all(np.array_equal(v, pushed_by_first[k]) for k, v in first.model.dense_arrays().items())
    second.train_many(_impressions(32, seed=2))  # syncs: mixes in first's push, then pushes the mix
    name = "model.heads.weight"
    local_after_step = second.model.dense_arrays()[name]
    assert np.array_equal(store.pull_dense([name]).tensors[name], local_after_step)
    assert not np.array_equal(local_after_step, pushed_by_first[name])


def test_dense_weights_of_another_model_config_neither_crash_a_start_nor_a_sync(caplog: pytest.LogCaptureFixture) -> None:
    store = ParamStore()
    old = OnlineTrainer(store, ModelConfig(tower_hidden=32), seed=1, config=TrainerConfig(dense_sync_every=1))
    new = OnlineTrainer(store, seed=2, config=TrainerConfig(dense_sync_every=1))  # the config changed: hidden 64
    assert "do not fit this model" in caplog.text
    name = "model.user_tower.0.weight"
    assert store.pull_dense([name]).tensors[name].shape == new.model.dense_arrays()[name].shape  # new's published
    old.train_many(_impressions(32, seed=1))  # a worker still on the old config: its sync logs, never mixes
    assert "pushed by a model of another config" in caplog.text
    new.train_many(_impressions(32, seed=2))  # and the new one takes the server back
    assert store.pull_dense([name]).tensors[name].shape == new.model.dense_arrays()[name].shape


def test_rolling_loss_and_auc_are_prometheus_metrics() -> None:
    registry = CollectorRegistry()
    trainer = OnlineTrainer(ParamStore(), registry=registry)
    for seed in range(3):
        trainer.train_many(_impressions(128, seed=seed))
    text = generate_latest(registry).decode()
    for name in ("rtrec_trainer_loss", "rtrec_trainer_auc", "rtrec_trainer_examples_total 384.0",
                 "rtrec_trainer_batches_total 3.0", "rtrec_trainer_batch_duration_seconds_count 3.0"):
        assert name in text
    assert 0.0 <= registry.get_sample_value("rtrec_trainer_auc") <= 1.0
    assert registry.get_sample_value("rtrec_trainer_loss") > 0


def test_binary_auc_equals_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=200).astype(float)  # many ties
    labels = rng.random(200) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert binary_auc(scores, labels) == pytest.approx(pairwise)
    assert np.isnan(binary_auc(scores, np.zeros(200)))


# -- positive-only streams: sampled negatives with log-Q ----------------------------------------

def _positives(n: int) -> list[Event]:
    return [Event(f"p{k}", f"u{k % 5}", f"i{k % 4}", "click" if k % 3 else "like", float(k),
                  item={"category": f"c{k % 2}"}) for k in range(n)]


def test_sampled_negatives_come_with_their_draw_probability_and_never_as_softmax_positives() -> None:
    sampler = NegativeSampler(alpha=0.75, seed=0)
    batch = add_sampled_negatives(ExampleBatch.from_positives(_positives(40)), sampler, k=3)
    stream, negatives = slice(0, 40), slice(40, None)
    assert len(batch) == 160
    assert not batch.sampled[stream].any() and batch.sampled[negatives].all()
    assert (batch.labels[negatives] == 0).all() and (batch.labels[stream, 0] == 1).all()
    hits = batch.items[negatives] == np.repeat(batch.items[stream], 3)
    assert (batch.weights[negatives][hits] == 0).all() and (batch.weights[negatives][~hits] == 1).all()
    assert np.isfinite(batch.sample_p).all() and (batch.sample_p > 0).all()
    # The same item has the same draw probability wherever it is in the batch.
    for item in np.unique(batch.items):
        assert np.unique(batch.sample_p[batch.items == item]).size == 1
    stats = OnlineTrainer(ParamStore()).train_many(batch)
    assert stats.retrieval_loss > 0 and np.isfinite(stats.loss)


def test_log_q_has_one_scale_whatever_mix_of_stream_and_sampled_rows_a_batch_holds() -> None:
    """Q_j = n_stream f_j + n_sampled P_j for every candidate, and every batch counts in f."""
    trainer = OnlineTrainer(ParamStore())
    impressions = ExampleBatch.from_impressions([(Event(str(k), f"u{k}", f"i{k % 4}", "impression", 1.0), 1.0)
                                                 for k in range(8)])
    trainer.train_many(impressions)
    positives = add_sampled_negatives(ExampleBatch.from_positives(_positives(8)), NegativeSampler(seed=0), k=2)
    trainer.train_many(positives)
    assert trainer.frequency.step == 2  # a batch with sampled negatives still counts in f
    items = trainer.slots.item
    candidates = feature_ids(items, np.array(["i0", "i1"]))
    f = np.exp(trainer.frequency.log_q(candidates).astype(np.float64))
    p = np.array([0.25, 0.5])
    got = trainer._log_q(candidates, p, n_stream=8, n_sampled=16)
    assert np.exp(got) == pytest.approx(8 * f + 16 * p, rel=1e-5)
    # without sampled rows the same candidates are on the same scale: expected counts, not shares
    assert np.exp(trainer._log_q(candidates, None, 8, 0)) == pytest.approx(8 * f, rel=1e-5)


def test_negative_sampler_follows_decayed_frequencies() -> None:
    sampler = NegativeSampler(alpha=1.0, half_life_steps=1.0, seed=0)
    sampler.observe_many(np.array(["old"] * 10), np.array(["c"] * 10))
    index = sampler.observe_many(np.array(["new"] * 10), np.array(["c"] * 10))
    # After one half-life "old" counts 5 against "new"'s 10.
    assert sampler.probability(np.array([0, index[0]])).round(3).tolist() == [0.333, 0.667]
    with pytest.raises(ValueError):
        NegativeSampler().sample(1)


def test_item_frequency_decays_and_defaults_unseen_ids_to_one_sighting() -> None:
    freq = ItemFrequency(bits=10, half_life_steps=1.0)
    freq.update_many(np.array([1, 1], dtype=np.uint64))
    freq.update_many(np.array([2, 2], dtype=np.uint64))
    q = np.exp(freq.log_q(np.array([1, 2, 3], dtype=np.uint64)))
    assert q.tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 3], abs=1e-6)


# -- learning on the click simulator -------------------------------------------------------------

@dataclass
class Trained:
    sim: ClickSimulator
    trainer: OnlineTrainer
    recent: RecentItems
    heldout: ExampleBatch
    impressions_per_user: dict[str, int]


def _join(events: list[Event]) -> list[tuple[Event, set[str]]]:
    """Impressions with the actions that followed them in the same request."""
    actions: dict[tuple[str | None, str], set[str]] = {}
    for e in events:
        if e.action != "impression":
            actions.setdefault((e.request_id, e.item_id), set()).add(e.action)
    return [(e, actions.get((e.request_id, e.item_id), set())) for e in events if e.action == "impression"]


@pytest.fixture(scope="module")
def trained() -> Trained:
    """30k simulated impressions trained in time order, batches of 256, plus 3k held-out ones.

    Small world (100 users, 300 items, 8 categories), flat-ish popularity, no drift; sparse Adagrad
    at lr 0.2 so this little data suffices (the default 0.05 needs ~3x more for the same margins).
    """
    sim = ClickSimulator(SimulatorConfig(users=100, items=300, categories=8, seed=3, shift_fraction=0.0,
                                         trending_items=0, popularity_zipf=0.3), run_id="t")
    tables = tuple(replace(t, optimizer=Adagrad(lr=0.2)) for t in DEFAULT_TABLES)
    trainer = OnlineTrainer(ParamStore(tables), tables=tables, config=TrainerConfig(lr=5e-3), seed=0)
    pairs = _join(sim.requests(3_300, 0.0, 1_000.0))
    train, heldout = pairs[:30_000], pairs[30_000:]
    recent = RecentItems(size=20)
    per_user: dict[str, int] = {}
    for lo in range(0, len(train), 256):
        chunk = train[lo:lo + 256]
        users = [e.user_id for e, _ in chunk]
        trainer.train_many(ExampleBatch.from_impressions(chunk, recent=recent.lookup_many(users)))
        recent.add_many([replace(e, action="click") for e, acts in chunk if "click" in acts])
        for u in users:
            per_user[u] = per_user.get(u, 0) + 1
    users = [e.user_id for e, _ in heldout]
    heldout_batch = ExampleBatch.from_impressions(heldout, recent=recent.lookup_many(users))
    return Trained(sim, trainer, recent, heldout_batch, per_user)


def test_heldout_click_auc_is_well_above_chance(trained: Trained) -> None:
    scores = trained.trainer.score_many(trained.heldout)[:, 0]
    labels = trained.heldout.labels[:, 0]
    assert labels.sum() > 100
    assert binary_auc(scores, labels) > 0.65
    assert trained.trainer.metrics.rolling_auc.value() > 0.6  # the prequential estimate agrees


def test_towers_retrieve_favourite_category_items_more_than_random(trained: Trained) -> None:
    sim, trainer = trained.sim, trained.trainer
    users = sorted(u for u, n in trained.impressions_per_user.items() if n >= 100)
    assert len(users) >= 50
    all_items = np.arange(sim.config.items)
    item_vectors = trainer.embed_items([f"i{j}" for j in all_items], [f"c{c}" for c in sim.category])
    user_vectors = trainer.embed_users(users, recent=trained.recent.lookup_many(users))
    k = 10
    top = np.argsort(-(user_vectors @ item_vectors.T), axis=1, kind="stable")[:, :k]
    favourite = sim.taste_before.argmax(axis=1)[[int(u[1:]) for u in users]]
    model_precision = (sim.category[top] == favourite[:, None]).mean()
    random_top = np.random.default_rng(0).permuted(np.tile(all_items, (len(users), 1)), axis=1)[:, :k]
    random_precision = (sim.category[random_top] == favourite[:, None]).mean()
    assert model_precision > 2 * random_precision


def test_a_batch_with_non_finite_features_is_skipped_and_changes_nothing() -> None:
    from param_server.store import ParamStore
    from rtrec.recipe.examples import ExampleBatch
    from rtrec.recipe.trainer import OnlineTrainer

    store = ParamStore()
    trainer = OnlineTrainer(store)
    dense = np.full((2, trainer.model.config.n_dense), np.nan, dtype=np.float32)  # e.g. a broken feature read
    batch = ExampleBatch.for_scoring(["u1", "u2"], ["i1", "i2"], ["c", "c"], [None, None], [[], []], dense)
    batch = type(batch)(**{**batch.__dict__, "labels": np.ones_like(batch.labels)})
    version = store.version
    stats = trainer.train_many(batch)
    assert stats.examples == 0 and trainer.skipped_batches == 1 and store.version == version
