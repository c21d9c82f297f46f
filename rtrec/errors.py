"""One exception hierarchy for rtrec, so callers can catch what they mean."""

from __future__ import annotations


class RtrecError(Exception):
    """Base class of every error rtrec raises on purpose."""


class ImproperlyConfigured(RtrecError):
    """A setting or argument is missing or inconsistent; the process cannot start."""


class StackError(RtrecError):
    """A server of the local stack could not be started or did not become ready."""


class InvalidEvent(RtrecError, ValueError):
    """An event failed validation; ``reason`` says why in one line for the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeliveryError(RtrecError):
    """Kafka did not acknowledge one or more events a producer sent."""
