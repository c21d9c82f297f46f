"""The parameter server: collisionless embedding tables, sparse optimizers, deltas, snapshots.

Public API (the in-process store and the clients share the method names ``pull_many``,
``push_many``, ``delta``, ``snapshot``, ``stats``, ``pull_dense``, ``push_dense``):

* :class:`param_server.store.ParamStore` -- one shard in process (the reference).
* :class:`param_server.client.ParamServerClient` -- one shard over TCP.
* :class:`param_server.sharding.ShardedClient` -- many shards, IDs routed by hash.
* :mod:`param_server.config` -- per-slot :class:`EmbeddingConfig` and ``DEFAULT_TABLES``.
* :func:`param_server.main.main` -- run one shard (``rtrec param-server``).
"""
