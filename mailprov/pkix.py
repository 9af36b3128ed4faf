"""How mailprov verifies a peer's certificate: one set of rules on every Python it runs on.

Python 3.13 made OpenSSL's strict RFC 5280 checks (``VERIFY_X509_STRICT``: for example a CA's key
identifiers must be present) and partial chains to a trusted intermediate (``VERIFY_X509_PARTIAL_CHAIN``)
the default; 3.11 and 3.12 do neither. Set both explicitly, so that ``mailprov check`` judges an MX's
or an MTA-STS host's certificate, and the courier accepts one, the same way on Debian 12 and 13.
"""

from __future__ import annotations

import ssl

STRICT_FLAGS = ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN


def verifying_context(cafile: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the chain (system CAs, or ``cafile``) and the host name, TLS 1.2+."""
    context = ssl.create_default_context(cafile=cafile)
    context.verify_flags |= STRICT_FLAGS
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
