"""Fixtures for the IMAP tests: a config on 127.0.13.x, users, and the service in a thread."""

from __future__ import annotations

import itertools

import pytest

from mailprov.users import UserDB
from tests.peers.imap_server import IMAPThread, imap_sections

PASSWORD = "correct horse"
_hosts = itertools.count(10)


@pytest.fixture(scope="session")
def imap_user_hashes(tmp_path_factory) -> dict[str, str]:
    """Users file content computed once per run (argon2id hashing is slow on purpose)."""
    path = tmp_path_factory.mktemp("imap-users") / "users"
    db = UserDB(path)
    for address in ("john@example.test", "mary@example.test"):
        db.add(address, PASSWORD)
    return {"text": path.read_text()}


@pytest.fixture
def imap_host() -> str:
    """A fresh address in this area's private range (127.0.13.0/24) for each test."""
    return f"127.0.13.{10 + next(_hosts) % 200}"


@pytest.fixture
def imap_config(make_config, imap_user_hashes, imap_host, tmp_path):
    """A config whose users file holds john and mary (example.test)."""

    def build(*, trusted: bool = True, **overrides):
        config = make_config(imap=imap_sections(imap_host, trusted=trusted, **overrides))
        users = tmp_path / "etc" / "users"
        users.parent.mkdir(parents=True, exist_ok=True)
        users.write_text(imap_user_hashes["text"])
        return config

    return build


@pytest.fixture
def imap_server(imap_config):
    """The IMAP service (trusted loopback: passwords allowed without TLS) running in a thread."""
    with IMAPThread(imap_config()) as server:
        yield server
