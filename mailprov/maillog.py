"""The mail log: one line per event, in the shape mail operators grep for (Postfix's).

Every line starts with the queue id (``NOQUEUE`` before there is one), then ``key=value`` pairs, then
the reply or reason in parentheses::

    4F2A19C03B7D01A2: client=unknown[127.0.3.2], sasl_username=alex@alpha.test, from=<alex@alpha.test>,
        size=1187, nrcpt=1 (queued)
    4F2A19C03B7D01A2: to=<john@beta.test>, relay=mx.beta.test[127.0.3.9]:25, delay=0.41,
        delays=0.02/0.01/0.12/0.26, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9C1)
    4F2A19C03B7D01A2: removed
    NOQUEUE: reject: RCPT from unknown[127.0.3.7]: 554 5.7.1 <x@elsewhere.test>: Relay access denied;
        from=<spam@evil.test> to=<x@elsewhere.test> helo=<evil>

(each on one line). ``delays=a/b/c/d`` splits ``delay`` as Postfix does: a = before the queue (receipt
up to durable storage), b = waiting in the queue, c = connection set-up (DNS, TCP, TLS), d = message
transmission. Lines go to the ``mailprov.maillog`` logger; no password or AUTH data is ever logged.
"""

from __future__ import annotations

import logging

log = logging.getLogger("mailprov.maillog")


def _clean(text: str) -> str:
    """One line, no control characters: a remote reply must not forge log lines."""
    if text.isprintable():
        return text.strip()
    return "".join(ch if ch.isprintable() else " " for ch in text.replace("\r", " ").replace("\n", " ")).strip()


def _fmt(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 10:
        return f"{seconds:.0f}"
    if seconds >= 0.1:
        return f"{seconds:.2g}" if seconds < 1 else f"{seconds:.1f}"
    return f"{seconds:.2f}" if seconds >= 0.01 else ("0" if seconds < 0.0005 else f"{seconds:.3f}")


def queued_line(
    queue_id: str, sender: str, size: int, nrcpt: int, where: str = "queued", *, client: str = "", sasl_username: str = ""
) -> str:
    """``QID: [client=HOST[ADDR], [sasl_username=U, ]]from=<S>, size=N, nrcpt=N (queued)``: the message is
    durable (one line where Postfix writes two: it is the hot path)."""
    who = f"client={_clean(client)}, " if client else ""
    if sasl_username:
        who += f"sasl_username={_clean(sasl_username)}, "
    return f"{queue_id}: {who}from=<{_clean(sender)}>, size={size}, nrcpt={nrcpt} ({where})"


def delivery_line(
    queue_id: str,
    *,
    to: str,
    orig_to: str = "",
    relay: str,
    delay: float,
    delays: tuple[float, float, float, float],
    dsn: str,
    status: str,
    reply: str,
) -> str:
    """The per-recipient line: where it went, how long it took, and what the other side said."""
    orig = f", orig_to=<{_clean(orig_to)}>" if orig_to and orig_to != to else ""
    parts = "/".join(_fmt(d) for d in delays)
    return (
        f"{queue_id}: to=<{_clean(to)}>{orig}, relay={_clean(relay) or 'none'}, delay={_fmt(delay)}, delays={parts}, "
        f"dsn={dsn}, status={status} ({_clean(reply)})"
    )


def reject_line(stage: str, client: str, reply: str, *, sender: str | None = None, rcpt: str | None = None, helo: str = "") -> str:
    """``NOQUEUE: reject: RCPT from CLIENT: REPLY; from=<> to=<> helo=<>``."""
    extra = []
    if sender is not None:
        extra.append(f"from=<{_clean(sender)}>")
    if rcpt is not None:
        extra.append(f"to=<{_clean(rcpt)}>")
    if helo:
        extra.append(f"helo=<{_clean(helo)}>")
    return f"NOQUEUE: reject: {stage} from {_clean(client)}: {_clean(reply)}; {' '.join(extra)}".rstrip("; ")


def emit(line: str, level: int = logging.INFO) -> None:
    """Write one mail log line."""
    log.log(level, "%s", line)
