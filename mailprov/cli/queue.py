"""``mailprov queue``: inspect and steer the mail queue (like mailq, postqueue and postsuper).

Safe while the server runs: every action is a rename or an unlink in the queue directories, and the
running server notices within ``queue.scan_interval`` seconds.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from mailprov.cli.common import DEFAULT_CONFIG, ConfigOption, load_config
from mailprov.queue import admin
from mailprov.queue.store import QueueStore

app = typer.Typer(help="Inspect and steer the mail queue.", no_args_is_help=True)

IdsArgument = Annotated[list[str], typer.Argument(help="Queue ids, or ALL.", show_default=False)]


def _store(config: str) -> QueueStore:
    return QueueStore(load_config(config).paths.queue_dir)


@app.command("list")
def list_(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List queued messages, mailq-style: '*' being delivered, '!' on hold; each pending recipient
    with its last reply."""
    found = admin.entries(_store(config))
    if as_json:
        rows = [
            {
                "id": e.item.id,
                "state": e.state,
                "sender": e.item.sender,
                "size": e.item.size,
                "arrival": e.item.arrival,
                "attempts": e.item.attempts,
                "next_attempt": e.item.next_attempt,
                "recipients": [
                    {k: getattr(r, k) for k in ("address", "original", "status", "attempts", "code", "enhanced", "reply", "relay")}
                    for r in e.item.recipients
                ],
            }
            for e in found
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(admin.format_list(found))


@app.command()
def show(
    queue_id: Annotated[str, typer.Argument(help="Queue id.")],
    config: ConfigOption = DEFAULT_CONFIG,
    body: Annotated[bool, typer.Option("--body", help="Print the whole message, not only its headers.")] = False,
) -> None:
    """Show one message: envelope, per-recipient status and headers."""
    state, item, message = admin.show(_store(config), queue_id)
    typer.echo(admin.format_item(state, item, message, body=body))


@app.command()
def flush(
    ids: Annotated[list[str] | None, typer.Argument(help="Queue ids (default: every deferred message).", show_default=False)] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Retry deferred messages now."""
    count = admin.flush(_store(config), ids or [])
    typer.echo(f"mailprov: {count} message(s) scheduled for immediate delivery")


@app.command()
def delete(ids: IdsArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Delete messages from the queue for good (no bounce is sent)."""
    count = admin.delete(_store(config), ids)
    typer.echo(f"mailprov: {count} message(s) deleted")


@app.command()
def hold(ids: IdsArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Put messages on hold: they are kept but not delivered until released."""
    count = admin.hold(_store(config), ids)
    typer.echo(f"mailprov: {count} message(s) put on hold")


@app.command()
def release(ids: IdsArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Release held messages for delivery."""
    count = admin.release(_store(config), ids)
    typer.echo(f"mailprov: {count} message(s) released")
