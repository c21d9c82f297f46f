"""Logging set-up shared by every rtrec process: one line per record on stderr.

Stdout is reserved for machine-readable lines (the ready line of ``rtrec up``, JSON summaries),
so logs never go there.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr at ``level``; safe to call more than once."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(getattr(h, "_rtrec", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._rtrec = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    # The Kafka clients log every reconnect at INFO; an operator needs their warnings only.
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
