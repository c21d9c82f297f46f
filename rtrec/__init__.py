"""rtrec: a Monolith-style real-time recommender.

The core package holds only what every component shares: the event schema, settings, logging, the
command line and the local-stack launcher. Components live in the top-level packages
``producers``, ``stream_workers``, ``features``, ``param_server`` and ``serving``.
"""

__version__ = "0.1.0"
