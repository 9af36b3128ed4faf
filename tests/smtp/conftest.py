"""Fixtures for the MTA tests: a mailprov tree and a running server on addresses in 127.0.3.0/24.

127.0.3.0/24 is this test area's private range; every server and client here binds inside it.
"""

from __future__ import annotations

import itertools
import os

import pytest

from tests.peers.mailprov_server import MailprovProcess, MailprovTree, run_mailprov

# .10-.99 for servers, one per test; clients bind .100-.199 (untrusted) or .200-.254 (trusted) as needed.
_ips = itertools.count(10 + (os.getpid() % 9) * 10)


def next_ip() -> str:
    """A fresh server address inside 127.0.3.0/24."""
    return f"127.0.3.{10 + (next(_ips) - 10) % 90}"


@pytest.fixture
def make_tree():
    """Factory: ``make_tree(**sections)`` -> MailprovTree with john@beta.test and alex@alpha.test; removed
    afterwards."""
    trees: list[MailprovTree] = []

    def build(*, users: bool = True, ip: str | None = None, **sections) -> MailprovTree:
        sections.setdefault("server", {})
        tree = MailprovTree.create(hostname="mx.beta.test", domains=["beta.test", "alpha.test"], ip=ip or next_ip(), **sections)
        if users:
            tree.add_user("john@beta.test", "john-secret")
            tree.add_user("alex@alpha.test", "alex-secret")
        trees.append(tree)
        return tree

    yield build
    for tree in trees:
        tree.cleanup()


@pytest.fixture
def mailprov_server():
    """Factory: ``mailprov_server(tree)`` -> a running ``mailprov serve smtp``; stopped afterwards."""
    running: list[MailprovProcess] = []

    def start(tree: MailprovTree, **kwargs) -> MailprovProcess:
        proc = run_mailprov(tree.config_path, **kwargs)
        running.append(proc)
        return proc

    yield start
    for proc in running:
        proc.stop()
