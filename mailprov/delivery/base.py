"""The courier contract: the queue hands a message to a courier, the courier says what happened.

A courier never decides about retries or bounces and the queue never speaks SMTP (chasquid's split).
Each recipient gets one :class:`Result`: delivered, temporary failure (the queue retries it later with
backoff) or permanent failure (the queue bounces it to the sender, unless the sender is ``<>``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

T = TypeVar("T")


class Outcome(enum.Enum):
    DELIVERED = "sent"
    TEMPORARY = "deferred"
    PERMANENT = "bounced"


@dataclass(frozen=True)
class Result:
    """What happened to one recipient, in the terms a mail log and a DSN need."""

    outcome: Outcome
    code: int  # SMTP reply code (250, 451, 550...); for local results the equivalent
    enhanced: str  # RFC 3463 status, e.g. "2.0.0", "4.4.1", "5.1.1"
    message: str  # the reply text (remote) or the reason (local), one line
    relay: str = ""  # "mx.example.org[192.0.2.1]:25", or "local"
    timings: dict[str, float] = field(default_factory=dict)  # e.g. {"dns": .., "connect": .., "xfer": ..}

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DELIVERED

    @classmethod
    def delivered(cls, relay: str, message: str = "delivered", code: int = 250, enhanced: str = "2.0.0") -> Result:
        return cls(Outcome.DELIVERED, code, enhanced, message, relay)

    @classmethod
    def temporary(cls, message: str, *, code: int = 451, enhanced: str = "4.0.0", relay: str = "") -> Result:
        return cls(Outcome.TEMPORARY, code, enhanced, message, relay)

    @classmethod
    def permanent(cls, message: str, *, code: int = 550, enhanced: str = "5.0.0", relay: str = "") -> Result:
        return cls(Outcome.PERMANENT, code, enhanced, message, relay)


@dataclass(frozen=True)
class Envelope:
    """One queued message as a courier sees it."""

    queue_id: str
    sender: str  # "" is the null sender
    recipients: tuple[str, ...]  # only the recipients this attempt is for
    arrival: float  # time.time() when the message was accepted
    smtputf8: bool = False
    body_8bit: bool = False


class Courier(Protocol):
    """Delivers one message to some of its recipients."""

    async def deliver(self, envelope: Envelope, message: bytes) -> dict[str, Result]:
        """Deliver ``message`` (the full RFC 5322 text, CRLF line ends, Received header included) to
        every recipient of ``envelope``; return a Result for each. Must not raise for delivery
        problems: a failure is a TEMPORARY or PERMANENT Result."""
        ...

    async def close(self) -> None:
        """Release cached connections and other resources."""
        ...


def group_by_domain(items: Iterable[T], address: Callable[[T], str]) -> dict[str, list[T]]:
    """``items`` grouped by the domain of ``address(item)`` (lower case, in first-seen order): one
    delivery per destination domain. The queue runner and the remote courier both group with this."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(address(item).rpartition("@")[2].lower(), []).append(item)
    return groups
