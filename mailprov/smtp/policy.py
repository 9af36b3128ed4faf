"""SMTP decisions as pure functions: who may send from where, relay to whom, and what we refuse.

Each function returns a :class:`Decision` (an SMTP reply: code, enhanced status, text); the protocol
handler only translates the dialogue into calls here and sends the reply back. Nothing here touches a
socket or a file, so every rule is testable alone (tests/smtp/test_policy.py).

Relay control (the rule that keeps the server from being an open relay):

* a recipient in a local domain is accepted only if it resolves to a mailbox or an alias (550 5.1.1
  otherwise, at RCPT time, so the server never accepts-then-bounces: no backscatter);
* a recipient anywhere else (including IP literals) is accepted only from an authenticated session or a
  client in ``smtp.trusted_networks``; everyone else gets 554 5.7.1 "Relay access denied".
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from mailprov.limits import client_in
from mailprov.smtp.address import Address
from mailprov.users import Resolution


@dataclass(frozen=True)
class Decision:
    """An SMTP reply. 2xx accepts, 4xx is a temporary refusal, 5xx a permanent one."""

    code: int
    enhanced: str
    text: str

    @property
    def accepted(self) -> bool:
        return self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


SENDER_OK = Decision(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Decision(250, "2.1.5", "Recipient OK")


@functools.lru_cache(maxsize=64)
def _parsed(networks: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(net, strict=False) for net in networks)


def in_networks(ip: str, networks: Iterable[str]) -> bool:
    """Whether ``ip`` is inside one of ``networks`` (unparseable addresses are not), as
    :func:`mailprov.limits.client_in` decides it."""
    return client_in(ip, _parsed(tuple(networks)))


def may_relay(*, authenticated: bool, client_ip: str, trusted_networks: Iterable[str]) -> bool:
    """Relaying to other domains is for authenticated users and trusted networks only."""
    return authenticated or in_networks(client_ip, trusted_networks)


def sender_decision(sender: Address | None, *, auth_user: str | None, owns_sender: bool) -> Decision:
    """MAIL FROM: an authenticated user may only use addresses it owns (its own, subaddresses, aliases
    pointing at it); the null sender is always allowed. Unauthenticated senders are not restricted here
    (SPF/DMARC are the receiving side's checks)."""
    if auth_user and sender is not None and not owns_sender:
        return Decision(553, "5.7.1", f"<{sender}>: Sender address not owned by user {auth_user}")
    return SENDER_OK


def recipient_decision(
    rcpt: Address,
    *,
    local_domain: bool,
    resolution: Resolution | None,
    relay_allowed: bool,
    count: int,
    max_recipients: int,
) -> Decision:
    """RCPT TO: ``count`` recipients already accepted in this transaction; ``resolution`` is the directory's
    answer for a local-domain recipient (None for remote ones)."""
    if count >= max_recipients:
        return Decision(452, "4.5.3", "Too many recipients")
    if local_domain and not rcpt.ip_literal:
        if resolution is not None and resolution.found:
            return RECIPIENT_OK
        return Decision(550, "5.1.1", f"<{rcpt}>: Recipient address rejected: User unknown in local recipient table")
    if relay_allowed:
        return RECIPIENT_OK
    return Decision(554, "5.7.1", f"<{rcpt}>: Relay access denied")


def helo_decision(name: str | None) -> Decision | None:
    """HELO/EHLO argument: refuse control characters (a NUL, CR, ...); RFC 5321 4.1.1.1 wants a domain or an
    address literal there, and a name with controls would go into Received headers and logs. None: accept."""
    if name and any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return Decision(501, "5.5.4", "Syntax: EHLO hostname (control characters are not allowed)")
    return None


def hops_decision(received_headers: int, max_hops: int) -> Decision | None:
    """Cut mail loops: too many Received headers means the message is going round in circles."""
    if received_headers >= max_hops:
        return Decision(554, "5.4.6", f"Too many hops ({received_headers} Received headers): mail forwarding loop")
    return None


def message_accepted(queue_id: str, *, delivered: bool) -> Decision:
    """The 250 to DATA: only sent once the message is durable (in Maildir or in the queue)."""
    return Decision(250, "2.0.0", f"Ok: {'delivered' if delivered else 'queued'} as {queue_id}")
