"""RemoteCourier: delivers queued mail to other domains over SMTP, found by MX (dnspython).

What it does for one message (``deliver``), per destination domain (grouped by
:func:`mailprov.delivery.base.group_by_domain`), all domains at once:

1. Route (:mod:`mailprov.delivery.routing`): transport/relayhost, address literal, or MX hosts with their
   addresses (IPv6 then IPv4). A DNS answer of "no such domain", a null MX or a mail loop is permanent;
   a DNS failure is temporary.
2. TLS policy (:mod:`mailprov.delivery.tlspolicy`), raised by the domain's MTA-STS policy when it
   publishes one (:mod:`mailprov.delivery.mta_sts`).
3. Wait for a slot: at most ``queue.per_destination`` deliveries to one destination at a time
   (:class:`~mailprov.delivery.remote.pool.DestinationSlots`).
4. Try the (host, address) pairs in order until one gives an answer: a connection that fails, a banner
   or EHLO that is not 2xx, TLS that the policy requires but cannot be had, all move on to the next
   (:mod:`~mailprov.delivery.remote.connect`). A cached idle connection to that host is reused when there
   is one (:class:`~mailprov.delivery.remote.pool.ConnectionPool`: no new TCP, TLS or EHLO).
5. One transaction for up to 50 recipients (:mod:`~mailprov.delivery.remote.transaction`: MAIL, RCPT
   each, DATA or BDAT, pipelined when the server offers PIPELINING): the replies decide each recipient's
   :class:`~mailprov.delivery.base.Result` -- 2xx delivered, 4xx temporary, 5xx permanent.

The message is DKIM-signed (:mod:`mailprov.delivery.dkim`) once per call when its sender is local.

Trust boundary: everything the remote server says is data. Its replies are kept to one line of at most
500 characters in results and logs.

Diagnostics: the queue runner logs each Result (relay, delays from ``timings`` -- dns, wait, connect,
xfer --, DSN code, reply). This package adds, starting with the queue id, a line per TLS session and per
host that could not be used, and a debug line per recipient.

Parameters: ``outbound.*`` (port, resolvers, helo_name, source_address, timeouts, tls, tls_policies,
mta_sts, dkim_*, transports) and ``queue.per_destination``. Constructor keywords exist for tests and
labs: ``resolver`` (a dnspython asyncio resolver), ``ca_file`` (trust anchors for ``verify`` and for
MTA-STS fetches), ``sts_fetch`` (the MTA-STS HTTPS fetch), ``sts_port`` (HTTPS port for MTA-STS).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import aiosmtplib
import dns.asyncresolver

from mailprov.config import Config
from mailprov.delivery.base import Envelope, Outcome, Result, group_by_domain
from mailprov.delivery.dkim import DKIMSigner
from mailprov.delivery.mta_sts import Fetcher, HTTPSFetcher, PolicyCache
from mailprov.delivery.remote.connect import Connector, SessionError, relay_name
from mailprov.delivery.remote.pool import ConnectionPool, DestinationSlots
from mailprov.delivery.remote.transaction import MAX_REPLY, converse, decide, prepare
from mailprov.delivery.routing import Hop, Route, Router, RoutingError
from mailprov.delivery.tlspolicy import TLSPolicy, policy_for

log = logging.getLogger("mailprov.outbound")

RECIPIENTS_PER_TRANSACTION = 50  # as Postfix's smtp_destination_recipient_limit
_ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


def split_reply(code: int, text: str) -> tuple[str, str]:
    """(enhanced status, one-line text) of a reply; the enhanced code is taken from the text when it
    starts with one of the same class, else derived from the reply code (RFC 3463)."""
    line = " ".join(part.strip() for part in (text or "").splitlines() if part.strip())
    # Multi-line replies repeat the enhanced code on every line: drop the repeats.
    match = _ENHANCED_RE.match(line)
    if match and int(match.group(1)) == code // 100:
        enhanced = ".".join(match.groups())
        line = line[match.end() :]
        line = line.replace(f" {enhanced} ", " ")
    else:
        cls = code // 100 if code // 100 in (2, 4, 5) else 4
        enhanced = f"{cls}.0.0"
    return enhanced, line[:MAX_REPLY]


def result_from_reply(code: int, text: str, relay: str, timings: dict[str, float]) -> Result:
    """The Result a recipient gets from the reply that decided it."""
    enhanced, line = split_reply(code, text)
    if 200 <= code < 300:
        outcome = Outcome.DELIVERED
    elif 500 <= code < 600:
        outcome = Outcome.PERMANENT
    else:  # 4xx, and anything malformed, is worth another try
        outcome = Outcome.TEMPORARY
        if enhanced[0] != "4":
            enhanced = "4" + enhanced[1:]
    return Result(outcome, code, enhanced, line, relay, dict(timings))


class _Attempt:
    """Recipients still undecided for one domain, and the results so far."""

    def __init__(self, recipients: list[str]) -> None:
        self.recipients = recipients
        self.results: dict[str, Result] = {}
        self.timings: dict[str, float] = {}


class RemoteCourier:
    """The courier for recipients in other domains (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        resolver: dns.asyncresolver.Resolver | None = None,
        ca_file: str | None = None,
        sts_fetch: Fetcher | None = None,
        sts_port: int = 443,
    ) -> None:
        self.config = config
        self.router = Router(config, resolver)
        self.ca_file = ca_file
        self.sts: PolicyCache | None = None
        if config.outbound.mta_sts:
            fetch = sts_fetch or HTTPSFetcher(self.router.resolver, ca_file=ca_file, port=sts_port)
            self.sts = PolicyCache(config.paths.state_dir, self.router.resolver, fetch=fetch)
        self.dkim = DKIMSigner(config)
        self.pool = ConnectionPool()
        self.slots = DestinationSlots(config.queue.per_destination)
        self.connector = Connector(config, ca_file)

    # -- the courier contract -------------------------------------------------------------------

    async def deliver(self, envelope: Envelope, message: bytes) -> dict[str, Result]:
        """Deliver ``message`` to every recipient of ``envelope``; one Result each, never raises."""
        by_domain = group_by_domain(envelope.recipients, str)
        try:
            signed = self.dkim.sign(message, envelope.sender)
        except Exception as exc:  # never lose a message over a signature
            log.warning("%s: DKIM signing failed, sending unsigned: %s", envelope.queue_id, exc)
            signed = message
        outcomes: list[dict[str, Result] | BaseException]
        if len(by_domain) == 1:  # the queue runner's usual call: one domain, no task needed
            ((domain, rcpts),) = by_domain.items()
            try:
                outcomes = [await self._deliver_domain(envelope, domain, rcpts, signed)]
            except Exception as exc:
                outcomes = [exc]
        else:
            outcomes = await asyncio.gather(
                *(self._deliver_domain(envelope, domain, rcpts, signed) for domain, rcpts in by_domain.items()),
                return_exceptions=True,
            )
        results: dict[str, Result] = {}
        for (_domain, rcpts), outcome in zip(by_domain.items(), outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                log.error("%s: internal error delivering to %s: %r", envelope.queue_id, ", ".join(rcpts), outcome, exc_info=outcome)
                outcome = {r: Result.temporary(f"internal error: {type(outcome).__name__}", code=451, enhanced="4.3.0") for r in rcpts}
            results.update(outcome)
        return results

    async def close(self) -> None:
        """Close the cached connections."""
        await self.pool.close()

    # -- one destination domain -----------------------------------------------------------------

    async def _deliver_domain(self, envelope: Envelope, domain: str, rcpts: list[str], message: bytes) -> dict[str, Result]:
        qid = envelope.queue_id
        start = time.monotonic()
        attempt = _Attempt(list(rcpts))
        try:
            route = await self.router.route(domain)
        except RoutingError as exc:
            attempt.timings["dns"] = time.monotonic() - start
            outcome = Outcome.TEMPORARY if exc.temporary else Outcome.PERMANENT
            result = Result(outcome, exc.code, exc.enhanced, exc.message, "", dict(attempt.timings))
            return self._finish(qid, {r: result for r in rcpts}, envelope)
        sts = None
        if self.sts is not None and route.kind in ("mx", "implicit-mx"):
            sts = await self.sts.policy(domain)
        policy = policy_for(self.config, domain, transport=route.transport, sts=sts)
        attempt.timings["dns"] = time.monotonic() - start

        waited = time.monotonic()
        async with self.slots.hold(route.destination):
            attempt.timings["wait"] = time.monotonic() - waited
            last_error = await self._try_targets(envelope, route, policy, attempt, message)
        if attempt.recipients:  # nobody answered for these: the last host's problem is their story
            err = last_error or SessionError(f"no usable host for {domain}")
            outcome = Outcome.PERMANENT if err.permanent else Outcome.TEMPORARY
            for rcpt in attempt.recipients:
                attempt.results[rcpt] = Result(outcome, err.code, err.enhanced, err.message, err.relay, dict(attempt.timings))
        return self._finish(qid, attempt.results, envelope)

    async def _try_targets(
        self, envelope: Envelope, route: Route, policy: TLSPolicy, attempt: _Attempt, message: bytes
    ) -> SessionError | None:
        """Try hosts in order until every recipient has an answer. Returns None, or the last host's failure
        with every host's problem in its message (the DSN and the log then tell the whole attempt)."""
        qid = envelope.queue_id
        last_error: SessionError | None = None
        problems: list[str] = []
        for hop, address in route.targets():
            if not policy.mx_permitted(hop.name):
                last_error = SessionError(
                    f"MX host {hop.name} is not allowed by the MTA-STS policy of {route.domain}", code=451, enhanced="4.7.5"
                )
                last_error.relay = relay_name(hop, address)
                problems.append(last_error.message)
                log.warning("%s: %s", qid, last_error.message)
                continue
            if policy.sts is not None and policy.sts.mode == "testing" and not policy.sts.permits(hop.name):
                log.warning("%s: MTA-STS (testing) of %s does not list MX %s; delivering anyway", qid, route.domain, hop.name)
            try:
                await self._deliver_via(envelope, route, hop, address, policy, attempt, message)
            except SessionError as exc:
                exc.relay = relay_name(hop, address)
                last_error = exc
                problems.append(exc.message)
                log.info("%s: %s: %s", qid, exc.relay, exc.message)
                continue
            if not attempt.recipients:
                return None
        if last_error is not None and len(problems) > 1:
            combined = SessionError("; ".join(problems), code=last_error.code, enhanced=last_error.enhanced)
            combined.relay = last_error.relay
            return combined
        return last_error

    async def _deliver_via(
        self, envelope: Envelope, route: Route, hop: Hop, address: str, policy: TLSPolicy, attempt: _Attempt, message: bytes
    ) -> None:
        """Deliver to all undecided recipients through one host; raises SessionError to move on."""
        relay = relay_name(hop, address)
        user = route.transport.username if route.transport else ""
        key = (address, hop.port, hop.name, policy.level, user)
        while attempt.recipients:
            session = self.pool.take(key)
            reused = session is not None
            connect_start = time.monotonic()
            if session is None:
                session = await self.connector.open(envelope.queue_id, route, hop, address, policy, key)
            attempt.timings["connect"] = attempt.timings.get("connect", 0.0) + (time.monotonic() - connect_start)
            batch = attempt.recipients[:RECIPIENTS_PER_TRANSACTION]
            xfer_start = time.monotonic()
            smtp = session.smtp
            plan, replies = prepare(envelope, batch, message, smtp.esmtp_extensions, relay)
            keep = True
            if plan is not None:
                try:
                    talk = await converse(smtp, plan, self.config.outbound.command_timeout)
                except BaseException:  # cancelled, or a bug: the connection's state is unknown, drop it
                    smtp.close()
                    raise
                outcome = decide(plan, talk, relay, reused=reused)
                if outcome.stale:
                    smtp.close()
                    if reused:  # the server closed an idle connection: open a fresh one and go again
                        continue
                    raise SessionError(f"lost connection with {relay} before MAIL FROM")
                replies.update(outcome.replies)
                keep = outcome.keep
                if outcome.reset:
                    keep = await _reset(smtp, self.config.outbound.command_timeout)
            attempt.timings["xfer"] = attempt.timings.get("xfer", 0.0) + (time.monotonic() - xfer_start)
            for rcpt, (code, text) in replies.items():
                attempt.results[rcpt] = result_from_reply(code, text, relay, attempt.timings)
            attempt.recipients = [r for r in attempt.recipients if r not in replies]
            session.transactions += 1
            if keep:
                self.pool.put(session)
            else:
                await session.quit()

    # -- results and logs -------------------------------------------------------------------------

    def _finish(self, qid: str, results: dict[str, Result], envelope: Envelope) -> dict[str, Result]:
        if not log.isEnabledFor(logging.DEBUG):
            return results
        for rcpt, result in results.items():
            t = result.timings
            delays = "/".join(f"{t.get(k, 0.0):.2f}" for k in ("dns", "wait", "connect", "xfer"))
            # The queue runner writes the mail log line for each result; this one is for debugging the courier.
            log.debug(
                "%s: to=<%s>, relay=%s, delays=%s, dsn=%s, status=%s (%d %s)",
                qid,
                rcpt,
                result.relay or "none",
                delays,
                result.enhanced,
                result.outcome.value,
                result.code,
                result.message,
            )
        return results


async def _reset(smtp: aiosmtplib.SMTP, timeout: float) -> bool:
    """RSET after a failed transaction so the connection can carry the next one; False if it cannot."""
    try:
        await smtp.rset(timeout=min(timeout, 30))
    except (aiosmtplib.SMTPException, ConnectionError, OSError):
        smtp.close()
        return False
    return smtp.is_connected
