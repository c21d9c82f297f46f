"""Throughput of ``OnlineTrainer.train_many`` against the in-process ParamStore.

Measured: examples/s of ``train_many`` on batches of 1024 simulated impressions (with up to 20
recent items and a device context each): feature-ID mapping, dedupe, one pull, forward, losses,
backward, one push (the server's Adagrad included), the dense Adam step and periodic dense syncs.
Baseline in the same run: the same model's forward, the same two losses, backward and Adam step
on preallocated tensors of the same shapes -- no IDs, no pull, no push. The ratio says what the
parameter-server round trip and the batch plumbing cost on top of the bare model. The two run
interleaved (one batch each per round) and the figures are medians of per-batch times, so load
from other processes hits both alike.

Run: ``python -m benchmarks.trainer [--batches N] [--batch-size B]``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch
from torch.nn import functional as F

from param_server.store import ParamStore
from producers.simulator import ClickSimulator, SimulatorConfig
from rtrec.recipe.model import RecModel, SparseFields
from rtrec.recipe.examples import ExampleBatch, RecentItems
from rtrec.recipe.trainer import OnlineTrainer


def _batches(n_batches: int, batch_size: int, seed: int = 0) -> list[ExampleBatch]:
    """Time-ordered impressions joined with their clicks, cut into batches, recent items attached."""
    sim = ClickSimulator(SimulatorConfig(seed=seed), run_id="bench")
    needed = n_batches * batch_size
    events = sim.requests(needed // sim.config.impressions_per_request + 1, 0.0, 3_600.0)
    clicked = {(e.request_id, e.item_id) for e in events if e.action == "click"}
    pairs = [(e, float((e.request_id, e.item_id) in clicked)) for e in events if e.action == "impression"]
    recent = RecentItems(size=20)
    out = []
    for lo in range(0, needed, batch_size):  # building batches from Event objects, outside the timing
        chunk = pairs[lo:lo + batch_size]
        out.append(ExampleBatch.from_impressions(chunk, recent=recent.lookup_many([e.user_id for e, _ in chunk])))
        recent.add_many([replace(e, action="click") for e, y in chunk if y > 0])
    return out


def _bare_model_step(model: RecModel, optimizer: torch.optim.Optimizer, fields: SparseFields,
                     labels: torch.Tensor, positives: torch.Tensor) -> None:
    """Forward, BCE + in-batch softmax, backward, Adam step: what train_many does minus the plumbing."""
    out = model(fields)
    loss = F.binary_cross_entropy_with_logits(out.logits, labels, reduction="sum")
    logits = model.retrieval_logits(out.user_vectors[positives], out.item_vectors)
    loss = loss + F.cross_entropy(logits, positives, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: stable figures on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    batches = _batches(args.batches + args.warmup, args.batch_size)
    trainer = OnlineTrainer(ParamStore())
    model = RecModel(trainer.model.config)
    optimizer = torch.optim.Adam(model.parameters(), lr=trainer.config.lr)
    b, d = args.batch_size, trainer.model.config.sparse_dim
    width = batches[-1].recent.shape[1]
    fields = SparseFields(*(torch.randn(*shape, requires_grad=True) for shape in
                            [(b, d), (b, d), (b, d), (b, 1, d)]), torch.ones(b, 1),
                          torch.randn(b, width, d, requires_grad=True), torch.ones(b, width))
    labels = torch.zeros(b, len(trainer.model.config.heads))
    positives = torch.arange(0, b, 12)  # ~8 % clicks, as in the stream

    # Interleaved, one batch of each per round, medians: a busy machine slows both alike.
    train_s, base_s = [], []
    for n, batch in enumerate(batches):
        t0 = time.perf_counter()
        stats = trainer.train_many(batch)
        t1 = time.perf_counter()
        _bare_model_step(model, optimizer, fields, labels, positives)
        t2 = time.perf_counter()
        if n >= args.warmup:
            train_s.append(t1 - t0)
            base_s.append(t2 - t1)
    rate = b / float(np.median(train_s))
    base_rate = b / float(np.median(base_s))
    print(f"train_many: {rate:,.0f} examples/s (median of {len(train_s)} batches of {b}; mean "
          f"{b / np.mean(train_s):,.0f}; last batch {stats.unique_ids} distinct IDs, loss {stats.loss:.4f}; "
          f"torch threads {torch.get_num_threads()})")
    print(f"baseline (same model fwd+bwd+Adam on preallocated tensors, no pull/push): {base_rate:,.0f} "
          f"examples/s (median; mean {b / np.mean(base_s):,.0f})")
    print(json.dumps({"benchmark": "trainer", "examples_per_s": round(rate, 1),
                      "baseline_examples_per_s": round(base_rate, 1), "ratio": round(rate / base_rate, 3),
                      "batch_size": args.batch_size, "batches": args.batches,
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
