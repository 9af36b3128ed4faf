"""Operator actions on the queue (``mailprov queue ...``), like Postfix's mailq, postqueue and postsuper.

They work on the directories only, so they are safe while the server runs: every action is a rename or
an unlink. ``flush`` and ``release`` then pull the trigger FIFO (:mod:`mailprov.queue.trigger`), so a
running server rescans ``incoming/`` at once; otherwise it notices within ``queue.scan_interval`` seconds.
An item being delivered at that moment finishes its attempt; its new
state is then written wherever the operator put it (``hold/``), or dropped if it was deleted.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mailprov.errors import UsageError
from mailprov.queue import trigger
from mailprov.queue.store import STATES, CorruptQueueFile, QueueItem, QueueStore, is_queue_id

# mailq's markers: '*' being delivered, '!' on hold.
MARKERS = {"active": "*", "hold": "!", "incoming": " ", "deferred": " "}


@dataclass
class Entry:
    """One queued message as listed."""

    state: str
    item: QueueItem


def entries(store: QueueStore, states: tuple[str, ...] = ("incoming", "active", "deferred", "hold")) -> Iterator[Entry]:
    """Every readable item, oldest (first queued) first, read as it is consumed: listing a queue of any
    size holds only its ids in memory (unreadable items are quarantined by the scan)."""
    for state, item in store.scan(states):
        yield Entry(state, item)


def _locate(store: QueueStore, queue_id: str) -> tuple[str, str]:
    """(state, id) of one item named by the operator; a malformed or unknown id is a usage error."""
    qid = queue_id.upper()
    if not is_queue_id(qid):
        raise UsageError(f"{queue_id!r} is not a queue id", fix="queue ids are the hex strings 'mailprov queue list' shows")
    state = store.locate(qid)
    if state is None:
        raise UsageError(f"no queued message {queue_id}", fix="see 'mailprov queue list'")
    return state, qid


def _targets(store: QueueStore, ids: list[str], states: tuple[str, ...]) -> list[tuple[str, str]]:
    """(state, id) pairs for ``ids`` (``ALL`` means every item in ``states``); unknown ids are an error."""
    if [i.upper() for i in ids] == ["ALL"]:
        return [(s, i) for s in states for i in store.ids(s)]
    out = []
    for queue_id in ids:
        state, qid = _locate(store, queue_id)
        if state in states:
            out.append((state, qid))
    return out


def flush(store: QueueStore, ids: list[str]) -> int:
    """Make deferred items due now (move them to ``incoming/``). Returns how many moved."""
    return _move(store, ids or ["ALL"], ("deferred",), "incoming")


def hold(store: QueueStore, ids: list[str]) -> int:
    """Park items in ``hold/``: they are not delivered until released."""
    return _move(store, ids, ("incoming", "active", "deferred"), "hold")


def release(store: QueueStore, ids: list[str]) -> int:
    """Release held items (to ``incoming/``; a running server is woken to deliver them now)."""
    return _move(store, ids, ("hold",), "incoming")


def _move(store: QueueStore, ids: list[str], states: tuple[str, ...], target: str) -> int:
    """Move the items ``ids`` names, found in ``states``, to ``target``; returns how many moved (an item
    that went away meanwhile, delivered or moved by the runner, is not counted). Items moved to
    ``incoming/`` wake a running runner, so they are delivered now rather than at its next scan."""
    moved = 0
    for state, qid in _targets(store, ids, states):
        with contextlib.suppress(FileNotFoundError):
            store.move(qid, state, target)
            moved += 1
    if moved and target == "incoming":
        trigger.pull(store.root)
    return moved


def delete(store: QueueStore, ids: list[str]) -> int:
    """Delete items for good (any state but ``corrupt``; remove those by hand after a look)."""
    removed = 0
    for state, qid in _targets(store, ids, ("incoming", "active", "deferred", "hold")):
        if store.path(state, qid).exists():
            store.remove(state, qid)
            removed += 1
    return removed


def show(store: QueueStore, queue_id: str) -> tuple[str, QueueItem, bytes]:
    """One item with its message."""
    state, qid = _locate(store, queue_id)
    try:
        item, message = store.read(state, qid)
    except CorruptQueueFile as exc:
        raise UsageError(f"{state}/{qid} is unreadable: {exc}", fix="inspect the file by hand") from None
    return state, item, message


def list_lines(found: Iterable[Entry]) -> Iterator[str]:
    """mailq's layout, line by line as the entries come: id (with marker), size, arrival, sender; then
    each pending recipient with its last reply; a total at the end."""
    total = count = 0
    for entry in found:
        if not count:
            yield "-Queue ID-          --Size-- ----Arrival Time---- -Sender/Recipient-------"
        item = entry.item
        total += item.size
        count += 1
        arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(item.arrival))
        yield f"{item.id}{MARKERS.get(entry.state, ' ')} {item.size:>8} {arrival}  {item.sender or 'MAILER-DAEMON'}"
        for rcpt in item.pending:
            if rcpt.reply:
                reply = f"{rcpt.code} {rcpt.enhanced} {rcpt.reply}" if rcpt.code else rcpt.reply
                yield f"{'':20}({reply[:200]})"
            yield f"{'':49}{rcpt.address}"
        yield ""
    if not count:
        yield "Mail queue is empty"
        return
    yield f"-- {max(1, total // 1024)} Kbytes in {count} Request{'s' if count != 1 else ''}."


def entry_json(entry: Entry) -> dict[str, Any]:
    """One entry as ``mailprov queue list --json`` shows it."""
    item = entry.item
    return {
        "id": item.id,
        "state": entry.state,
        "sender": item.sender,
        "size": item.size,
        "arrival": item.arrival,
        "attempts": item.attempts,
        "next_attempt": item.next_attempt,
        "recipients": [
            {k: getattr(r, k) for k in ("address", "original", "status", "attempts", "code", "enhanced", "reply", "relay")}
            for r in item.recipients
        ],
    }


def json_lines(found: Iterable[Entry]) -> Iterator[str]:
    """A JSON array of :func:`entry_json` objects (indented by 2), one element at a time."""
    first = True
    for entry in found:
        element = json.dumps(entry_json(entry), indent=2).replace("\n", "\n  ")
        yield ("[\n  " if first else ",\n  ") + element
        first = False
    yield "[]" if first else "\n]"


def format_item(state: str, item: QueueItem, message: bytes, *, body: bool = False) -> str:
    """Everything about one item: envelope, per-recipient status, then the headers (or the whole message)."""
    lines = [
        f"queue id:     {item.id}",
        f"state:        {state}",
        f"sender:       <{item.sender}>",
        f"arrival:      {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(item.arrival))}",
        f"size:         {item.size}",
        f"client:       {item.client}" + (f" (sasl_username={item.auth_user})" if item.auth_user else ""),
        f"attempts:     {item.attempts}",
    ]
    if item.next_attempt and item.pending:
        lines.append(f"next attempt: {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(item.next_attempt))}")
    lines.append("recipients:")
    for r in item.recipients:
        orig = f" (for {r.original})" if r.original != r.address else ""
        reply = f": {r.code} {r.enhanced} {r.reply}" if r.code else (f": {r.reply}" if r.reply else "")
        lines.append(f"  {r.status:<9} {r.address}{orig} [{'local' if r.local else 'remote'}, {r.attempts} attempts]{reply}")
    lines.append("")
    end = message.find(b"\r\n\r\n")
    shown = message if body or end < 0 else message[: end + 2]
    lines.append(shown.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n"))
    return "\n".join(lines)


__all__ = [
    "STATES",
    "Entry",
    "delete",
    "entries",
    "entry_json",
    "flush",
    "format_item",
    "hold",
    "json_lines",
    "list_lines",
    "release",
    "show",
]
