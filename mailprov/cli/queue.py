"""``mailprov queue``: inspect and steer the mail queue (like mailq, postqueue and postsuper).

Safe while the server runs: every action is a rename or an unlink in the queue directories; ``flush``
and ``release`` wake the running server at once (the queue's trigger FIFO), the others take effect
within ``queue.scan_interval`` seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated

import typer

from mailprov.cli.common import DEFAULT_CONFIG, ConfigOption, load_config

if TYPE_CHECKING:
    from mailprov.queue.store import QueueStore

app = typer.Typer(help="Inspect and steer the mail queue.", no_args_is_help=True)

IdsArgument = Annotated[list[str], typer.Argument(help="Queue ids, or ALL.", show_default=False)]


def _store(config: str) -> QueueStore:
    # Imported here, not at the top: --help and the other commands need neither the queue nor asyncio.
    from mailprov.queue.store import QueueStore

    return QueueStore(load_config(config).paths.queue_dir)


@app.command("list")
def list_(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List queued messages, mailq-style: '*' being delivered, '!' on hold; each pending recipient
    with its last reply."""
    # Imported in each command, not at the top: --help and the other commands need neither the queue nor asyncio.
    from mailprov.queue import admin

    found = admin.entries(_store(config))
    if as_json:
        _stream(admin.json_lines(found), end="")
        typer.echo()
    else:
        _stream(admin.list_lines(found))


def _stream(lines: Iterable[str], *, end: str = "\n", batch: int = 1000) -> None:
    """Print as the lines come (a queue of any size in bounded memory), a batch per write."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(line + end)
        if len(chunk) >= batch:
            typer.echo("".join(chunk), nl=False)
            chunk.clear()
    typer.echo("".join(chunk), nl=False)


@app.command()
def show(
    queue_id: Annotated[str, typer.Argument(help="Queue id.")],
    config: ConfigOption = DEFAULT_CONFIG,
    body: Annotated[bool, typer.Option("--body", help="Print the whole message, not only its headers.")] = False,
) -> None:
    """Show one message: envelope, per-recipient status and headers."""
    from mailprov.queue import admin

    state, item, message = admin.show(_store(config), queue_id)
    typer.echo(admin.format_item(state, item, message, body=body))


@app.command()
def flush(
    ids: Annotated[list[str] | None, typer.Argument(help="Queue ids (default: every deferred message).", show_default=False)] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Retry deferred messages now."""
    from mailprov.queue import admin

    count = admin.flush(_store(config), ids or [])
    typer.echo(f"mailprov: {count} message(s) scheduled for immediate delivery")


@app.command()
def delete(ids: IdsArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Delete messages from the queue for good (no bounce is sent)."""
    from mailprov.queue import admin

    count = admin.delete(_store(config), ids)
    typer.echo(f"mailprov: {count} message(s) deleted")


@app.command()
def hold(ids: IdsArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Put messages on hold: they are kept but not delivered until released."""
    from mailprov.queue import admin

    count = admin.hold(_store(config), ids)
    typer.echo(f"mailprov: {count} message(s) put on hold")


@app.command()
def release(ids: IdsArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Release held messages for delivery."""
    from mailprov.queue import admin

    count = admin.release(_store(config), ids)
    typer.echo(f"mailprov: {count} message(s) released")
