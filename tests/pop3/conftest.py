"""Fixtures for the POP3 tests: a config on 127.0.4.x, users, and the service in a thread."""

from __future__ import annotations

import itertools

import pytest

from mailprov.users import UserDB
from tests.peers.pop3_server import POP3Thread, pop3_sections

PASSWORD = "correct horse"
_hosts = itertools.count(10)


@pytest.fixture(scope="session")
def user_hashes(tmp_path_factory) -> dict[str, str]:
    """Users file content computed once per run (argon2id hashing is slow on purpose)."""
    path = tmp_path_factory.mktemp("users") / "users"
    db = UserDB(path)
    for address in ("john@example.test", "mary@example.test", "solo@other.test"):
        db.add(address, PASSWORD)
    return {"text": path.read_text()}


@pytest.fixture
def pop3_host() -> str:
    """A fresh address in this area's private range (127.0.4.0/24) for each test."""
    return f"127.0.4.{10 + next(_hosts) % 200}"


@pytest.fixture
def pop3_config(make_config, user_hashes, pop3_host, tmp_path):
    """A config whose users file holds john, mary (example.test) and solo (other.test)."""

    def build(*, trusted: bool = True, domains: tuple[str, ...] = ("example.test",), **overrides):
        config = make_config(domains=domains, pop3=pop3_sections(pop3_host, trusted=trusted, **overrides))
        users = tmp_path / "etc" / "users"
        users.parent.mkdir(parents=True, exist_ok=True)
        users.write_text(user_hashes["text"])
        return config

    return build


@pytest.fixture
def pop3_server(pop3_config):
    """The POP3 service (trusted loopback: passwords allowed without TLS) running in a thread."""
    with POP3Thread(pop3_config()) as server:
        yield server
