"""A DNSSEC lab on 127.0.14.0/24: Knot signing zones itself, Unbound validating in front, broken cases made for real.

``diag.test`` (the lab's trust anchor, signed by Knot) delegates to:

- ``good.diag.test``: signed by Knot, its DS at the parent; MX, host address and a TLSA record (DANE);
- ``unsigned.diag.test``: not signed, no DS (insecure), with a TLSA record (meaningless without DNSSEC);
- ``badds.diag.test``: signed by Knot, but the parent's DS is that of another key (a DS matching no DNSKEY);
- ``expired.diag.test``: signed (by dnspython) with signatures that expired 3 days ago, served as is by Knot;
- ``n3.diag.test``: signed by Knot with NSEC3 (RFC 5155), delegating ``insecure.n3.diag.test`` without DS;
- ``ta.diag.test``: signed by Knot; its MX host (127.0.21.10) has a DANE-TA record (``2 1 1``) naming the
  test CA, which the MX's served chain must include (RFC 7671 5.2.2); in the same zone, the domain
  ``spki.ta.diag.test`` has its MX host at 127.0.24.10 under a ``2 1 0`` record (the test CA's whole public
  key), so that its server may leave the CA out of its chain;
- ``six.diag.test``: signed (by dnspython), two MX hosts with A and AAAA records; the AAAA RRset of
  ``mail.six.diag.test`` was changed after signing (its RRSIG no longer matches: bogus), its A is sound.

Knot signs with a manual policy and a combined signing key (CSK) generated with ``keymgr`` before it
starts, so that the parent's DS records can be written into its zone first. Unbound validates from the
trust anchor of ``diag.test`` and asks Knot through stub zones; nothing leaves the machine. The same Knot
serves the reverse zone of 127.0.14.0/24 and two blocklist zones (``zen.spamhaus.org``, ``bl.spamcop.net``)
for the ``dnsbl`` tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdatatype
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

from tests.peers.knot import KnotServer

KNOT_ADDRESS = "127.0.14.1"
UNBOUND_ADDRESS = "127.0.14.2"
GOOD_MX_ADDRESS = "127.0.14.10"  # mail.good.diag.test (mx.tls tests serve SMTP here)
TA_MX_ADDRESS = "127.0.21.10"  # mail.ta.diag.test (the DANE-TA test serves SMTP here)
SPKI_MX_ADDRESS = "127.0.24.10"  # mail.spki.ta.diag.test (the DANE-TA 2 1 0 test serves SMTP here, without the CA)
STS_ADDRESS = "127.0.14.20"  # mta-sts.good.diag.test (the MTA-STS tests serve the policy here)
SOA = "@ SOA ns.diag.test. hostmaster.diag.test. 1 3600 600 86400 300\n@ NS ns.diag.test.\n"


def _keymgr(conf: Path, *args: str) -> str:
    keymgr = shutil.which("keymgr") or "/usr/sbin/keymgr"  # /usr/sbin is not on every PATH
    done = subprocess.run([keymgr, "-c", str(conf), *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"keymgr {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


class SigningKnot(KnotServer):
    """Knot with DNSSEC signing (manual policy, one pre-generated CSK) for the zones in ``signed``."""

    def __init__(
        self, workdir: Path, address: str, port: int, zones: dict[str, str], signed: set[str], nsec3: frozenset[str] = frozenset()
    ) -> None:
        super().__init__(workdir, address, port, zones)
        self.signed = signed
        self.nsec3 = nsec3  # of the signed zones, those denying with NSEC3 (RFC 5155) instead of NSEC

    def _config(self) -> str:
        text = super()._config()
        policy = "policy:\n" + "".join(
            f"  - id: {pid}\n    algorithm: ecdsap256sha256\n    single-type-signing: on\n    manual: on\n    nsec3: {on}\n"
            for pid, on in (("lab", "off"), ("lab3", "on"))
        )
        text = text.replace("template:\n", policy + "template:\n", 1)
        for name in self.signed:
            text = re.sub(
                rf'(  - domain: "{re.escape(name)}"\n    file: "[^"]*"\n)',
                rf"\1    dnssec-signing: on\n    dnssec-policy: {'lab3' if name in self.nsec3 else 'lab'}\n",
                text,
            )
        return text

    def generate_keys(self) -> dict[str, list[str]]:
        """Write the config, generate a CSK per signed zone; returns each zone's DS records (presentation format)."""
        (self.workdir / "db").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "knot.conf"
        conf.write_text(self._config())
        out = {}
        for name in sorted(self.signed):
            _keymgr(conf, name, "generate", "algorithm=ecdsap256sha256", "ksk=yes", "zsk=yes")
            out[name] = [line for line in _keymgr(conf, name, "ds").splitlines() if " DS " in line and " 13 2 " in line]
        return out


def _expired_zone(origin: str) -> tuple[str, str]:
    """A zone signed with signatures valid from 30 days ago to 3 days ago (past resolvers' clock skew allowance), and its DS (SHA-256)."""
    text = (
        f"$ORIGIN {origin}.\n$TTL 300\n{SOA}@ MX 10 mail\nmail A 127.0.14.12\n"
        f'_25._tcp.mail TLSA 3 1 1 {"ab" * 32}\n@ TXT "v=spf1 mx -all"\n'
    )
    zone = dns.zone.from_text(text, origin=origin + ".", relativize=False)
    private = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(private.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257)
    now = int(time.time())
    with zone.writer() as txn:
        dns.dnssec.sign_zone(zone, txn, keys=[(private, dnskey)], inception=now - 30 * 86400, expiration=now - 3 * 86400, dnskey_ttl=300)
    ds = dns.dnssec.make_ds(origin + ".", dnskey, "SHA256")
    return zone.to_text(relativize=False), f"{origin}. DS {ds.to_text()}"


def _bogus_aaaa_zone(origin: str) -> tuple[str, str]:
    """A zone signed with valid signatures, whose ``mail`` AAAA RRset was then changed (bogus), and its DS (SHA-256)."""
    text = (
        f"$ORIGIN {origin}.\n$TTL 300\n{SOA}@ MX 10 mail\n@ MX 20 mail6\n"
        "mail A 127.0.21.12\nmail AAAA 2001:db8::21:12\nmail6 A 127.0.21.13\nmail6 AAAA 2001:db8::21:13\n"
    )
    zone = dns.zone.from_text(text, origin=origin + ".", relativize=False)
    private = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(private.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257)
    now = int(time.time())
    with zone.writer() as txn:
        dns.dnssec.sign_zone(zone, txn, keys=[(private, dnskey)], inception=now - 86400, expiration=now + 30 * 86400, dnskey_ttl=300)
    signed = zone.to_text(relativize=False)
    tampered = signed.replace("2001:db8::21:12", "2001:db8::66:66")  # the RRSIG over the AAAA RRset stays the old one
    assert tampered != signed
    ds = dns.dnssec.make_ds(origin + ".", dnskey, "SHA256")
    return tampered, f"{origin}. DS {ds.to_text()}"


def lab_zones(ds: dict[str, list[str]], expired_ds: str, tlsa_good: str, tlsa_ta: str = "", six_ds: str = "") -> dict[str, str]:
    """The parent and child zones; ``ds`` holds the DS records of the Knot-signed children."""
    wrong_key = dns.dnssec.make_dnskey(ec.generate_private_key(ec.SECP256R1()).public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, 257)
    wrong_ds = dns.dnssec.make_ds("badds.diag.test.", wrong_key, "SHA256").to_text()
    parent = (
        f"$ORIGIN diag.test.\n$TTL 300\n{SOA}ns A {KNOT_ADDRESS}\n"
        "good NS ns.diag.test.\nunsigned NS ns.diag.test.\nbadds NS ns.diag.test.\nexpired NS ns.diag.test.\nn3 NS ns.diag.test.\n"
        "ta NS ns.diag.test.\nsix NS ns.diag.test.\n"
        + "".join(line + "\n" for line in ds["good.diag.test"] + ds["n3.diag.test"] + ds.get("ta.diag.test", []))
        + f"badds DS {wrong_ds}\n{expired_ds}\n{six_ds}\n"
    )
    good = (
        f"$ORIGIN good.diag.test.\n$TTL 300\n{SOA}@ MX 10 mail\nmail A {GOOD_MX_ADDRESS}\n{tlsa_good}\n"
        '@ TXT "v=spf1 mx -all"\n_dmarc TXT "v=DMARC1; p=reject"\n'
        f'_mta-sts TXT "v=STSv1; id=20261130"\nmta-sts A {STS_ADDRESS}\n'
    )
    unsigned = f"$ORIGIN unsigned.diag.test.\n$TTL 300\n{SOA}@ MX 10 mail\nmail A 127.0.14.11\n_25._tcp.mail TLSA 3 1 1 {'cd' * 32}\n"
    badds = f"$ORIGIN badds.diag.test.\n$TTL 300\n{SOA}@ MX 10 mail\nmail A 127.0.14.13\n"
    reverse = f"$ORIGIN 14.0.127.in-addr.arpa.\n$TTL 300\n{SOA}" + "".join(
        f"{n} PTR mail.{z}.diag.test.\n" for n, z in ((10, "good"), (11, "unsigned"), (12, "expired"), (13, "badds"))
    )
    # Blocklists as Knot zones under the real lists' names (served on loopback only): 127.0.14.10 is clean,
    # .11 is listed, .12 gets Spamhaus's answer to public resolvers, .13 an answer a rewriting resolver gives.
    head = f"$TTL 300\n{SOA}"
    spamhaus = (
        head + '11.14.0.127 A 127.0.0.2\n11.14.0.127 A 127.0.0.4\n11.14.0.127 TXT "https://check.spamhaus.org/sbl/query/SBL1"\n'
        "12.14.0.127 A 127.255.255.254\n13.14.0.127 A 198.51.100.7\n"
    )
    spamcop = head + "11.14.0.127 A 127.0.0.2\n"
    n3 = f"$ORIGIN n3.diag.test.\n$TTL 300\n{SOA}insecure NS ns.diag.test.\n"
    insecure = f"$ORIGIN insecure.n3.diag.test.\n$TTL 300\n{SOA}@ MX 10 mail\nmail A 127.0.14.14\n"
    ta = f"$ORIGIN ta.diag.test.\n$TTL 300\n{SOA}@ MX 10 mail\nmail A {TA_MX_ADDRESS}\n{tlsa_ta}\n"
    return {
        "ta.diag.test": ta,
        "n3.diag.test": n3,
        "insecure.n3.diag.test": insecure,
        "zen.spamhaus.org": spamhaus,
        "bl.spamcop.net": spamcop,
        "diag.test": parent,
        "good.diag.test": good,
        "unsigned.diag.test": unsigned,
        "badds.diag.test": badds,
        "14.0.127.in-addr.arpa": reverse,
    }


def start_lab(workdir: Path, tlsa_good: str, tlsa_ta: str = "") -> tuple[SigningKnot, list[str]]:
    """Start the signing Knot (not yet the resolver); returns it and the trust anchor of ``diag.test``."""
    signed = {"diag.test", "good.diag.test", "badds.diag.test", "n3.diag.test", "ta.diag.test"}
    names = ("diag.test", "good.diag.test", "unsigned.diag.test", "badds.diag.test", "expired.diag.test", "14.0.127.in-addr.arpa")
    names += ("zen.spamhaus.org", "bl.spamcop.net", "n3.diag.test", "insecure.n3.diag.test", "ta.diag.test", "six.diag.test")
    placeholder = {n: "" for n in names}
    knot = SigningKnot(workdir, KNOT_ADDRESS, 0, placeholder, signed, nsec3=frozenset({"n3.diag.test"}))
    ds = knot.generate_keys()
    expired_text, expired_ds = _expired_zone("expired.diag.test")
    six_text, six_ds = _bogus_aaaa_zone("six.diag.test")
    zones = lab_zones(ds, expired_ds, tlsa_good, tlsa_ta, six_ds)
    zones["expired.diag.test"] = expired_text
    zones["six.diag.test"] = six_text
    knot.zones = zones
    knot.start()
    return knot, ds["diag.test"]
