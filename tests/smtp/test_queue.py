"""The queue and the MDA without sockets: store format, runner decisions, DSNs, restart, Maildir writes.

Couriers for remote mail are scripted fakes (the real one is tested in tests/outbound); local delivery
uses the real LocalCourier into a temporary Maildir.
"""

from __future__ import annotations

import asyncio
import email
import os
import stat
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailprov.cli import app
from mailprov.delivery.base import Envelope, Result
from mailprov.delivery.local import LocalCourier
from mailprov.maildir import crlf_size
from mailprov.queue import admin, trigger
from mailprov.queue.diskio import DiskIO
from mailprov.queue.runner import QueueRunner
from mailprov.queue.store import QueueItem, QueueStore, Recipient, new_queue_id, parse
from mailprov.users import AliasDB, Directory, UserDB

MSG = b"From: alex@alpha.test\r\nTo: john@beta.test\r\nSubject: test\r\n\r\nhello\r\n"


class ScriptedCourier:
    """Returns scripted Results per address (the last one repeats); records every call."""

    def __init__(self, script: dict[str, list[Result]] | None = None, gate: asyncio.Event | None = None) -> None:
        self.script = script or {}
        self.calls: list[tuple[str, ...]] = []
        self.gate = gate
        self.in_flight = 0
        self.max_in_flight = 0

    async def deliver(self, envelope: Envelope, message: bytes) -> dict[str, Result]:
        self.calls.append(envelope.recipients)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await asyncio.wait_for(self.gate.wait(), 5)
            out = {}
            for rcpt in envelope.recipients:
                results = self.script.get(rcpt) or [Result.delivered("mx.remote.test[127.0.3.99]:25", "250 ok")]
                out[rcpt] = results.pop(0) if len(results) > 1 else results[0]
            return out
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        return None


@pytest.fixture
def env(make_config, tmp_path):
    cfg = make_config(domains=("beta.test", "alpha.test"), queue={"retry_min": 1, "retry_max": 2, "scan_interval": 0.2})
    users = UserDB(cfg.paths.users_file)
    users.add("john@beta.test", "pw")
    users.add("alex@alpha.test", "pw")
    directory = Directory(users, AliasDB(cfg.paths.aliases_file), cfg.server.domains)
    return cfg, directory


def maildir(cfg, address):
    local, domain = address.split("@")
    folder = os.path.join(cfg.paths.mail_dir, domain, local, "new")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def make_item(sender, *targets, arrival=None):
    rcpts = [Recipient(address=a, original=a, local=a.endswith((".beta.test", "@beta.test", "@alpha.test"))) for a in targets]
    return QueueItem(id=new_queue_id(), sender=sender, recipients=rcpts, arrival=arrival or time.time())


async def run_until_idle(runner, predicate=lambda: True, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        if runner.idle.is_set() and predicate():
            return
    raise AssertionError("queue did not settle in time")


def build_runner(cfg, directory, remote):
    io = DiskIO(4)
    store = QueueStore(cfg.paths.queue_dir)
    local = LocalCourier(cfg, directory, io=io)
    return QueueRunner(cfg, store, directory, local, remote, io, rng=lambda: 0.5), store


def test_store_round_trip_and_corrupt_quarantine(make_config):
    cfg = make_config()
    store = QueueStore(cfg.paths.queue_dir)
    store.ensure_dirs()
    item = make_item("alex@alpha.test", "x@remote.test")
    store.write_new(item, MSG)
    loaded, message = store.read("incoming", item.id)
    assert (loaded.id, loaded.sender, message) == (item.id, "alex@alpha.test", MSG)
    assert loaded.recipients[0].status == "pending"
    bad = store.dir("deferred") / "0123456789ABCDEF01"
    bad.write_bytes(b"garbage")
    assert [i.id for _, i in store.scan()] == [item.id]
    assert not bad.exists()
    assert (store.dir("corrupt") / bad.name).read_bytes() == b"garbage"  # quarantined, not deleted


def test_local_and_remote_delivery_then_removed(env):
    cfg, directory = env
    remote = ScriptedCourier()

    async def main():
        runner, store = build_runner(cfg, directory, remote)
        await runner.start()
        await runner.enqueue(make_item("alex@alpha.test", "john@beta.test", "x@remote.test", "y@other.test"), MSG)
        await run_until_idle(runner)
        await runner.stop()
        return store

    store = asyncio.run(main())
    assert len(maildir(cfg, "john@beta.test")) == 1
    assert sorted(remote.calls) == [("x@remote.test",), ("y@other.test",)]  # one call per destination domain
    assert not any(store.ids(s) for s in ("incoming", "active", "deferred"))


def test_partial_delivery_is_remembered_and_only_the_rest_retried(env):
    cfg, directory = env
    remote = ScriptedCourier({"b@remote.test": [Result.temporary("try later", code=451, enhanced="4.3.0"), Result.delivered("mx")]})

    async def main():
        runner, store = build_runner(cfg, directory, remote)
        await runner.start()
        item = make_item("alex@alpha.test", "a@remote.test", "b@remote.test")
        await runner.enqueue(item, MSG)
        await run_until_idle(runner, lambda: bool(store.ids("deferred")))
        deferred, _ = store.read("deferred", item.id)
        statuses = {r.address: (r.status, r.reply) for r in deferred.recipients}
        runner.flush()
        await run_until_idle(runner, lambda: not store.ids("deferred"))
        await runner.stop()
        return statuses

    statuses = asyncio.run(main())
    assert statuses == {"a@remote.test": ("sent", "250 ok"), "b@remote.test": ("deferred", "try later")}
    assert remote.calls == [("a@remote.test", "b@remote.test"), ("b@remote.test",)]


def test_queue_flush_and_release_wake_a_running_runner_at_once(env):
    """`mailprov queue flush` / `release` (admin functions) pull the trigger FIFO: with a scan interval of an
    hour, the runner still delivers the flushed and the released item at once (Postfix: postqueue -f)."""
    cfg, directory = env
    cfg.queue.scan_interval = 3600.0
    remote = ScriptedCourier({"a@remote.test": [Result.temporary("try later", code=451, enhanced="4.3.0"), Result.delivered("mx")]})

    async def main():
        runner, store = build_runner(cfg, directory, remote)
        await runner.start()
        deferred = make_item("alex@alpha.test", "a@remote.test")
        await runner.enqueue(deferred, MSG)
        await run_until_idle(runner, lambda: bool(store.ids("deferred")))
        held = make_item("alex@alpha.test", "b@remote.test")
        store.write_new(held, MSG)
        store.move(held.id, "incoming", "hold")
        assert admin.flush(store, []) == 1
        await run_until_idle(runner, lambda: not store.ids("deferred") and not store.ids("incoming"), timeout=5)
        assert admin.release(store, ["ALL"]) == 1
        await run_until_idle(runner, lambda: len(remote.calls) == 3 and not store.ids("incoming"), timeout=5)
        await runner.stop()
        assert not trigger.pull(store.root)  # nobody listens once the runner stopped
        return store

    store = asyncio.run(main())
    assert remote.calls == [("a@remote.test",), ("a@remote.test",), ("b@remote.test",)]
    assert not any(store.ids(s) for s in ("incoming", "active", "deferred", "hold"))
    assert stat.S_ISFIFO(os.lstat(trigger.path(store.root)).st_mode)
    assert stat.S_IMODE(os.lstat(trigger.path(store.root)).st_mode) == 0o600


def test_permanent_failure_bounces_to_sender_with_rfc3464_report(env):
    cfg, directory = env
    remote = ScriptedCourier({"gone@remote.test": [Result.permanent("user unknown", code=550, enhanced="5.1.1", relay="mx.remote.test")]})

    async def main():
        runner, _ = build_runner(cfg, directory, remote)
        await runner.start()
        await runner.enqueue(make_item("alex@alpha.test", "gone@remote.test"), MSG)
        await run_until_idle(runner, lambda: bool(maildir(cfg, "alex@alpha.test")))
        await runner.stop()

    asyncio.run(main())
    (name,) = maildir(cfg, "alex@alpha.test")
    raw = Path(os.path.join(cfg.paths.mail_dir, "alpha.test", "alex", "new", name)).read_bytes()
    assert raw.startswith(b"Return-Path: <>\r\n")  # from the null sender
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report"
    report = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    text = report.as_string()
    assert "Final-Recipient: rfc822; gone@remote.test" in text
    assert "Action: failed" in text and "Status: 5.1.1" in text
    assert "Diagnostic-Code: smtp; 550 5.1.1 user unknown" in text
    headers = next(p for p in msg.walk() if p.get_content_type() == "text/rfc822-headers")
    assert b"Subject: test" in headers.as_bytes()


def test_a_bounce_is_never_bounced(env):
    cfg, directory = env
    remote = ScriptedCourier({"gone@remote.test": [Result.permanent("no", code=550, enhanced="5.1.1")]})

    async def main():
        runner, store = build_runner(cfg, directory, remote)
        await runner.start()
        await runner.enqueue(make_item("", "gone@remote.test"), MSG)
        await run_until_idle(runner)
        await asyncio.sleep(0.3)
        await runner.stop()
        return store

    store = asyncio.run(main())
    assert remote.calls == [("gone@remote.test",)]  # no DSN was queued anywhere
    assert not any(store.ids(s) for s in ("incoming", "active", "deferred"))


def test_expired_message_bounces(env):
    cfg, directory = env
    cfg.queue.max_lifetime = 60
    remote = ScriptedCourier({"slow@remote.test": [Result.temporary("greylisted", code=450, enhanced="4.7.1")]})

    async def main():
        runner, store = build_runner(cfg, directory, remote)
        await runner.start()
        await runner.enqueue(make_item("alex@alpha.test", "slow@remote.test", arrival=time.time() - 120), MSG)
        await run_until_idle(runner, lambda: bool(maildir(cfg, "alex@alpha.test")))
        await runner.stop()
        return store

    store = asyncio.run(main())
    (name,) = maildir(cfg, "alex@alpha.test")
    raw = Path(os.path.join(cfg.paths.mail_dir, "alpha.test", "alex", "new", name)).read_bytes()
    assert b"expired" in raw and b"greylisted" in raw
    assert not store.ids("deferred")


def test_restart_resumes_incoming_active_and_deferred(env):
    cfg, directory = env
    store = QueueStore(cfg.paths.queue_dir)
    store.ensure_dirs()
    items = {state: make_item("alex@alpha.test", "john@beta.test") for state in ("incoming", "active", "deferred")}
    for state, item in items.items():
        store.write_new(item, MSG)
        if state != "incoming":
            store.move(item.id, "incoming", state)
    held = make_item("alex@alpha.test", "john@beta.test")
    store.write_new(held, MSG)
    store.move(held.id, "incoming", "hold")
    (store.dir("incoming") / ".ABC.tmp").write_bytes(b"partial, never acknowledged")

    async def main():
        runner, _ = build_runner(cfg, directory, ScriptedCourier())
        await runner.start()
        await run_until_idle(runner, lambda: len(maildir(cfg, "john@beta.test")) == 3)
        await runner.stop()

    asyncio.run(main())
    assert len(maildir(cfg, "john@beta.test")) == 3
    assert store.ids("hold") == [held.id]  # held stays held
    assert not (store.dir("incoming") / ".ABC.tmp").exists()


def test_same_domain_messages_are_handed_over_concurrently(env):
    cfg, directory = env

    async def main():
        gate = asyncio.Event()
        remote = ScriptedCourier(gate=gate)
        runner, _ = build_runner(cfg, directory, remote)
        await runner.start()
        for _ in range(5):
            await runner.enqueue(make_item("alex@alpha.test", "x@remote.test"), MSG)
        for _ in range(100):
            if remote.in_flight >= 5:
                break
            await asyncio.sleep(0.02)
        gate.set()
        await run_until_idle(runner)
        await runner.stop()
        return remote

    remote = asyncio.run(main())
    assert remote.max_in_flight == 5


def test_local_courier_defers_on_io_error_and_refuses_unknown(env):
    cfg, directory = env
    os.makedirs(cfg.paths.mail_dir, exist_ok=True)
    with open(os.path.join(cfg.paths.mail_dir, "beta.test"), "w") as f:  # a file where a directory must be
        f.write("x")

    async def main():
        courier = LocalCourier(cfg, directory)
        try:
            return await courier.deliver(Envelope("Q", "a@b.test", ("john@beta.test", "ghost@beta.test"), time.time()), MSG)
        finally:
            await courier.close()

    results = asyncio.run(main())
    assert results["john@beta.test"].outcome.value == "deferred"
    assert results["john@beta.test"].enhanced.startswith("4.")
    assert (results["ghost@beta.test"].code, results["ghost@beta.test"].enhanced) == (550, "5.1.1")


def test_maildir_file_is_complete_and_named_with_size(env):
    cfg, directory = env

    async def main():
        courier = LocalCourier(cfg, directory)
        try:
            return await courier.deliver(Envelope("Q", "alex@alpha.test", ("john+lists@beta.test",), time.time()), MSG)
        finally:
            await courier.close()

    assert asyncio.run(main())["john+lists@beta.test"].ok
    (name,) = maildir(cfg, "john@beta.test")
    data = Path(os.path.join(cfg.paths.mail_dir, "beta.test", "john", "new", name)).read_bytes()
    assert data == b"Return-Path: <alex@alpha.test>\r\nDelivered-To: john@beta.test\r\n" + MSG
    assert name.endswith(f",S={len(data)},W={crlf_size(data, final=False)}")  # Dovecot's size hints
    assert not os.listdir(os.path.join(cfg.paths.mail_dir, "beta.test", "john", "tmp"))


def test_queue_cli(env, tmp_path):
    cfg, _ = env
    store = QueueStore(cfg.paths.queue_dir)
    store.ensure_dirs()
    item = make_item("alex@alpha.test", "x@remote.test")
    item.recipients[0].status, item.recipients[0].code, item.recipients[0].reply = "deferred", 451, "try later"
    store.write_new(item, MSG)
    store.move(item.id, "incoming", "deferred")
    conf = tmp_path / "mailprov.toml"
    conf.write_text(f'[server]\nhostname = "mx.beta.test"\ndomains = ["beta.test"]\n[paths]\nqueue_dir = "{cfg.paths.queue_dir}"\n')
    run = CliRunner().invoke

    out = run(app, ["queue", "list", "-c", str(conf)])
    assert out.exit_code == 0 and item.id in out.output and "x@remote.test" in out.output and "try later" in out.output
    out = run(app, ["queue", "show", item.id.lower(), "-c", str(conf)])
    assert out.exit_code == 0 and "deferred" in out.output and "Subject: test" in out.output
    assert run(app, ["queue", "hold", item.id, "-c", str(conf)]).exit_code == 0
    assert store.locate(item.id) == "hold"
    assert "!" in run(app, ["queue", "list", "-c", str(conf)]).output
    assert run(app, ["queue", "release", "ALL", "-c", str(conf)]).exit_code == 0
    assert store.locate(item.id) == "incoming"
    store.move(item.id, "incoming", "deferred")
    assert "1 message" in run(app, ["queue", "flush", "-c", str(conf)]).output
    assert store.locate(item.id) == "incoming"
    assert run(app, ["queue", "delete", item.id, "-c", str(conf)]).exit_code == 0
    assert store.locate(item.id) is None
    out = run(app, ["queue", "show", "FFFFFFFFFFFFFFFFFF", "-c", str(conf)])
    assert out.exit_code == 2 and "no queued message" in out.output and "Traceback" not in out.output
    assert "Mail queue is empty" in run(app, ["queue", "list", "-c", str(conf)]).output
    parsed = parse(item.header_bytes() + MSG)
    assert parsed[1] == MSG


def test_delay_warning_is_sent_once(env):
    cfg, directory = env
    cfg.queue.delay_warning = 60
    remote = ScriptedCourier({"slow@remote.test": [Result.temporary("greylisted", code=450, enhanced="4.7.1")]})

    async def main():
        runner, store = build_runner(cfg, directory, remote)
        await runner.start()
        item = make_item("alex@alpha.test", "slow@remote.test", arrival=time.time() - 120)
        await runner.enqueue(item, MSG)
        await run_until_idle(runner, lambda: bool(store.ids("deferred")) and bool(maildir(cfg, "alex@alpha.test")))
        runner.flush()  # a second failed attempt: no second warning
        await run_until_idle(runner, lambda: len(remote.calls) == 2 and bool(store.ids("deferred")))
        await runner.stop()
        return store.read("deferred", item.id)[0]

    item = asyncio.run(main())
    (name,) = maildir(cfg, "alex@alpha.test")
    raw = Path(cfg.paths.mail_dir, "alpha.test", "alex", "new", name).read_bytes()
    assert b"Action: delayed" in raw and b"Status: 4.7.1" in raw and b"Will-Retry-Until:" in raw
    assert item.warned and item.recipients[0].status == "deferred"


def test_stale_maildir_tmp_files_are_cleaned_fresh_ones_kept(env):
    cfg, directory = env
    tmp = Path(cfg.paths.mail_dir, "beta.test", "john", "tmp")
    for sub in ("tmp", "new", "cur"):
        (tmp.parent / sub).mkdir(parents=True, exist_ok=True)
    (tmp / "old").write_bytes(b"crash leftover")
    os.utime(tmp / "old", (time.time() - 40 * 3600,) * 2)
    (tmp / "fresh").write_bytes(b"being written right now")

    async def main():
        courier = LocalCourier(cfg, directory)
        try:
            return await courier.deliver(Envelope("Q", "a@b.test", ("john@beta.test",), time.time()), MSG)
        finally:
            await courier.close()

    assert asyncio.run(main())["john@beta.test"].ok
    assert sorted(p.name for p in tmp.iterdir()) == ["fresh"]
