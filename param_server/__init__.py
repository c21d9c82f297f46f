"""Parameter server: collisionless embedding tables, sparse optimizers, deltas, snapshots, shards."""
