"""Delivery status notifications (RFC 3464): the bounce and the delay warning.

A DSN is sent from the null sender ``<>`` to the original sender, as a ``multipart/report`` with three
parts: a human-readable explanation, a ``message/delivery-status`` part (one block per recipient: Final-
and Original-Recipient, Action, Status, Remote-MTA, Diagnostic-Code) and the original message's headers
(``text/rfc822-headers``; the body is not returned, to keep bounces small). The queue never sends a DSN
for a message whose sender is ``<>``: a bounce is never bounced (no loops, no backscatter storms).
"""

from __future__ import annotations

import email.utils
import secrets
import time

from mailprov.queue.store import QueueItem, Recipient


def _header_section(message: bytes, limit: int = 64 * 1024) -> bytes:
    end = message.find(b"\r\n\r\n")
    head = message[: end + 2] if end >= 0 else message
    return head[:limit]


def _date(ts: float) -> str:
    return email.utils.formatdate(ts, localtime=False)


def build_dsn(item: QueueItem, recipients: list[Recipient], message: bytes, *, hostname: str, action: str = "failed") -> bytes:
    """The DSN message (CRLF line ends) reporting ``recipients`` of ``item``; ``action`` is ``failed`` or
    ``delayed``."""
    boundary = f"{item.id}/{hostname}/{secrets.token_hex(4)}"
    now = time.time()
    if action == "failed":
        subject = "Undelivered Mail Returned to Sender"
        human = (
            f"This is the mail system at host {hostname}.\n\n"
            "I'm sorry to have to inform you that your message could not be delivered to one or more\n"
            "recipients. The mail system's reasons are below; the headers of your message are attached.\n"
        )
    else:
        subject = "Delayed Mail (still being retried)"
        human = (
            f"This is the mail system at host {hostname}.\n\n"
            "Your message could not be delivered yet to the recipients below. The mail system will keep\n"
            "trying; you do not need to send it again. You will be told if it finally fails.\n"
        )
    lines = [f"<{r.address}>: {r.reply or 'no reason recorded'}" for r in recipients]
    human += "\n" + "\n".join(lines) + "\n"

    status = [f"Reporting-MTA: dns; {hostname}", f"X-Mailprov-Queue-ID: {item.id}", f"Arrival-Date: {_date(item.arrival)}"]
    blocks = []
    for r in recipients:
        block = [f"Final-Recipient: rfc822; {r.address}"]
        if r.original and r.original != r.address:
            block.append(f"Original-Recipient: rfc822; {r.original}")
        block.append(f"Action: {action}")
        enhanced = r.enhanced or ("5.0.0" if action == "failed" else "4.0.0")
        block.append(f"Status: {enhanced}")
        if r.relay and r.relay != "local":
            block.append(f"Remote-MTA: dns; {r.relay.split('[', 1)[0]}")
        if r.code:
            block.append(f"Diagnostic-Code: smtp; {r.code} {enhanced} {r.reply}")
        elif r.reply:
            block.append(f"Diagnostic-Code: X-mailprov; {r.reply}")
        if r.last_attempt:
            block.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if action == "delayed":
            block.append(f"Will-Retry-Until: {_date(item.arrival + float(item.extra.get('max_lifetime', 0) or 0))}")
        blocks.append("\r\n".join(block))
    delivery_status = "\r\n".join(status) + "\r\n\r\n" + "\r\n\r\n".join(blocks) + "\r\n"

    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{item.sender}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: <{item.id}.{secrets.token_hex(6)}.dsn@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    parts = [
        "\r\n".join(head) + "\r\n\r\nThis is a MIME-encapsulated message.\r\n",
        f"--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n" + human.replace("\n", "\r\n"),
        f"--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n" + delivery_status,
        f"--{boundary}\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n",
    ]
    out = "".join(p if p.endswith("\r\n") else p + "\r\n" for p in parts).encode("utf-8")
    out += _header_section(message)
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    out += f"\r\n--{boundary}--\r\n".encode()
    return out
