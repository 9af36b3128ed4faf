"""DKIM signing (RFC 6376) of outbound mail from local domains, with dkimpy.

Which messages: those whose ``From:`` domain is a local domain (``server.domains``), signed for that
domain (DMARC aligns on ``From:``); failing that, those whose envelope sender's domain is local. Bounces
from the null sender with a non-local ``From:`` are not signed.

Which key: ``outbound.dkim_selector`` and ``outbound.dkim_key``. ``mailprov dns plan --dkim-key-dir``
writes one key per domain as ``DIR/SELECTOR._domainkey.DOMAIN.key``; when such a file exists beside
``dkim_key`` for the signing domain it is used, else ``dkim_key`` itself (one key published for every
domain). Keys are read once, when the courier starts: a missing or unreadable key is a configuration
error naming ``outbound.dkim_key``, never a silent unsigned message.

Signature: ``rsa-sha256``, ``relaxed/relaxed`` canonicalization (robust against the header re-folding
and trailing-space changes relays do), dkimpy's default header list with ``From`` over-signed.

Speed: dkimpy computes the RSA signature with Python integers (about 10 ms for a 2048-bit key here). The
signing step alone is routed to OpenSSL (through ``cryptography``) for the keys this module loaded; RSA
PKCS#1 v1.5 signatures are deterministic, so the bytes are identical (a test checks this), and every
other key still goes through dkimpy's own code.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mailprov.config import Config
from mailprov.errors import ConfigError

log = logging.getLogger("mailprov.outbound")

_FROM_RE = re.compile(rb"^from:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_ADDR_DOMAIN_RE = re.compile(rb"@([A-Za-z0-9.-]+)\s*>?\s*(?:$|,|\()")

# Keys loaded by DKIMSigner, by RSA modulus: their signatures are made by OpenSSL.
_FAST_KEYS: dict[int, rsa.RSAPrivateKey] = {}
_original_sign = dkim.RSASSA_PKCS1_v1_5_sign
_HASHES: dict[str, Any] = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}


def _openssl_sign(h: Any, pk: dict[str, int]) -> bytes:
    """dkimpy's RSASSA-PKCS1-v1_5 signing step, done by OpenSSL for keys we loaded."""
    key = _FAST_KEYS.get(pk.get("modulus", 0))
    algorithm = _HASHES.get(getattr(h, "name", "").lower())
    if key is None or algorithm is None:
        return _original_sign(h, pk)
    return key.sign(h.digest(), padding.PKCS1v15(), Prehashed(algorithm()))


dkim.RSASSA_PKCS1_v1_5_sign = _openssl_sign


def header_from_domain(message: bytes) -> str:
    """The domain of the first address in the ``From:`` header ('' when there is none)."""
    end = message.find(b"\r\n\r\n")
    head = message[: end if end >= 0 else len(message)]
    match = _FROM_RE.search(head)
    if not match:
        return ""
    domain = _ADDR_DOMAIN_RE.search(match.group(1).replace(b"\r\n", b"") + b"\n")
    return domain.group(1).decode("ascii").lower().rstrip(".") if domain else ""


class DKIMSigner:
    """Signs messages from local domains; ``enabled`` is False when no selector is configured."""

    def __init__(self, config: Config) -> None:
        self.selector = config.outbound.dkim_selector
        self.enabled = bool(self.selector and config.outbound.dkim_key)
        self.local_domains = set(config.server.domains)
        self._keys: dict[str, bytes] = {}
        if not self.enabled:
            return
        default_path = Path(config.outbound.dkim_key)
        default = _load_key(default_path)
        for domain in self.local_domains:
            sibling = default_path.parent / f"{self.selector}._domainkey.{domain}.key"
            self._keys[domain] = _load_key(sibling) if sibling.exists() and sibling != default_path else default

    def signing_domain(self, message: bytes, sender: str) -> str:
        """The local domain to sign for: the ``From:`` domain, else the sender's; '' for none."""
        domain = header_from_domain(message)
        if domain in self.local_domains:
            return domain
        sender_domain = sender.rpartition("@")[2].lower()
        return sender_domain if sender and sender_domain in self.local_domains else ""

    def sign(self, message: bytes, sender: str) -> bytes:
        """``message`` with a DKIM-Signature header in front, or unchanged when it is not ours to sign."""
        if not self.enabled:
            return message
        domain = self.signing_domain(message, sender)
        if not domain:
            return message
        try:
            header = dkim.sign(
                message,
                self.selector.encode("ascii"),
                domain.encode("ascii"),
                self._keys[domain],
                canonicalize=(b"relaxed", b"relaxed"),
            )
        except dkim.DKIMException as exc:
            # A message dkimpy cannot parse still goes out, unsigned: refusing it would lose mail.
            log.warning("DKIM signing for %s failed, sending unsigned: %s", domain, exc)
            return message
        return header + message


def _load_key(path: Path) -> bytes:
    """Read an RSA private key (PEM, PKCS#1 or PKCS#8) and return it as PKCS#1 PEM for dkimpy."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        fix = "run 'mailprov dns plan --dkim-key-dir DIR'"
        raise ConfigError("outbound.dkim_key", f"cannot read {path}: {exc.strerror}", fix) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        fix = "point it at an unencrypted PEM RSA key"
        raise ConfigError("outbound.dkim_key", f"{path} is not a PEM private key ({exc})", fix) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("outbound.dkim_key", f"{path} is not an RSA key", "use an RSA key (2048 bits), as 'mailprov dns plan' writes")
    if key.key_size < 1024:
        raise ConfigError("outbound.dkim_key", f"{path} has only {key.key_size} bits", "use a 2048-bit RSA key")
    _FAST_KEYS[key.private_numbers().public_numbers.n] = key
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
