"""Fixtures for the security tests. Addresses in 127.0.7.0/24: servers .130-.149, clients .152-.159."""

from __future__ import annotations

import itertools
import os
import ssl

_ips = itertools.count((os.getpid() % 4) * 5)


def next_ip() -> str:
    """A fresh server address in 127.0.7.130-149."""
    return f"127.0.7.{130 + next(_ips) % 20}"


def insecure_context() -> ssl.SSLContext:
    """TLS to the test server's self-signed certificate (what is tested here is not the certificate)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
