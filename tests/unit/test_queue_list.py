"""``mailprov queue list`` streams: entries are read one at a time as they are printed, oldest first
across the states, and the streamed JSON is the same document a single json.dumps would give."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from mailprov.cli import app
from mailprov.queue import admin
from mailprov.queue.store import QueueItem, QueueStore, Recipient, new_queue_id

MSG = b"Subject: q\r\n\r\nbody\r\n"


def fill(store: QueueStore, states: list[str]) -> list[str]:
    store.ensure_dirs()
    ids = []
    for i, state in enumerate(states):
        rcpt = Recipient(f"r{i}@remote.test", f"r{i}@remote.test", False, status="deferred", code=451, enhanced="4.4.1", reply="later")
        item = QueueItem(id=new_queue_id(), sender="a@alpha.test", recipients=[rcpt], arrival=time.time(), size=len(MSG))
        (store.dir(state) / item.id).write_bytes(item.header_bytes() + MSG)
        ids.append(item.id)
    return ids


def test_entries_stream_in_queue_order_across_states(tmp_path, monkeypatch):
    store = QueueStore(tmp_path / "queue")
    ids = fill(store, ["hold", "deferred", "incoming", "deferred", "active"])
    assert [(e.state, e.item.id) for e in admin.entries(store)] == list(
        zip(["hold", "deferred", "incoming", "deferred", "active"], ids, strict=True)
    )
    reads = []
    real = store.read_header
    monkeypatch.setattr(store, "read_header", lambda state, qid: reads.append(qid) or real(state, qid))
    lines = admin.list_lines(admin.entries(store))
    assert next(lines).startswith("-Queue ID-") and ids[0] in next(lines)
    assert reads == [ids[0]], "only the first item may have been read to print its line"
    rest = list(lines)
    assert rest[-1] == "-- 1 Kbytes in 5 Requests." and len(reads) == 5


def test_streamed_json_is_one_json_document(tmp_path):
    store = QueueStore(tmp_path / "queue")
    assert "".join(admin.json_lines(admin.entries(store))) == "[]"
    fill(store, ["deferred", "hold"])
    whole = json.dumps([admin.entry_json(e) for e in admin.entries(store)], indent=2)
    assert "".join(admin.json_lines(admin.entries(store))) == whole
    conf = tmp_path / "mailprov.toml"
    conf.write_text(f'[server]\nhostname = "mx.beta.test"\ndomains = ["beta.test"]\n[paths]\nqueue_dir = "{tmp_path / "queue"}"\n')
    out = CliRunner().invoke(app, ["queue", "list", "--json", "-c", str(conf)])
    assert out.exit_code == 0 and json.loads(out.output) == json.loads(whole)
    out = CliRunner().invoke(app, ["queue", "list", "-c", str(conf)])
    assert out.exit_code == 0 and out.output.endswith("-- 1 Kbytes in 2 Requests.\n")


def test_a_malformed_queue_id_is_a_usage_error(tmp_path):
    conf = tmp_path / "mailprov.toml"
    conf.write_text(f'[server]\nhostname = "mx.beta.test"\ndomains = ["beta.test"]\n[paths]\nqueue_dir = "{tmp_path / "queue"}"\n')
    QueueStore(tmp_path / "queue").ensure_dirs()
    out = CliRunner().invoke(app, ["queue", "delete", "../../etc", "-c", str(conf)])
    assert out.exit_code == 2 and "is not a queue id" in out.output and "Traceback" not in out.output
