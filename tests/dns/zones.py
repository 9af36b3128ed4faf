"""Test zones covering every check, good and broken, and the status each case must get.

One forward zone ``zz.test`` holds a domain per case; the reverse zones hold the PTRs of the addresses
used. The same texts feed Knot (network mode) and the zone files (offline ``--zone`` mode).
"""

from __future__ import annotations

import base64
import functools

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ZONE = "zz.test"
SELECTOR = "sel"
# A 512-bit RSA public key (cryptography refuses to generate one; made once with openssl genrsa 512).
KEY_512 = "MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBANpmvSwxgCZtIO+wcRkX9FF4F1fveEV9q8qxg7eIo6zxDw89d3ufEFH2RHQGCJWC4/deVTKamNrV+YexPsmaKQMCAwEAAQ=="


@functools.cache
def public_key(bits: int) -> str:
    """Base64 SubjectPublicKeyInfo of a fresh RSA key of ``bits``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def dkim_txt(p: str) -> str:
    """A DKIM TXT rdata, split into 200-byte strings as a zone file needs."""
    value = f"v=DKIM1; k=rsa; p={p}"
    return " ".join(f'"{value[i : i + 200]}"' for i in range(0, len(value), 200)) or '""'


def forward_zone() -> str:
    """The zz.test zone."""
    return f"""$ORIGIN {ZONE}.
$TTL 300
@ SOA ns hostmaster 1 3600 600 86400 60
@ NS ns
ns A 192.0.2.53
other A 192.0.2.41

; good: every check passes
good MX 10 mx.good
mx.good A 192.0.2.10
mx.good AAAA 2001:db8::10
good TXT "v=spf1 mx include:_spf.good.zz.test -all"
_spf.good TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.good TXT "v=DMARC1; p=reject; rua=mailto:dmarc@good.zz.test"
{SELECTOR}._domainkey.good TXT {dkim_txt(public_key(2048))}
_mta-sts.good TXT "v=STSv1; id=20260101"
_smtp._tls.good TXT "v=TLSRPTv1; rua=mailto:tls@good.zz.test"

*.wild A 192.0.2.99
*.wild TXT "wildcard"
exists.wild MX 10 mx.good
deep.ent.wild A 192.0.2.98
wildmx MX 10 host.wild

nullmx MX 0 .
mixednull MX 0 .
mixednull MX 10 mx.good
implicit A 192.0.2.10
nomail TXT "no mail here"
cnamemx MX 10 alias.cnamemx
alias.cnamemx CNAME mx.good
literalmx MX 10 192.0.2.10.
noaddr MX 10 mx.noaddr
noptr MX 10 mx.noptr
mx.noptr A 192.0.2.30
badfcrdns MX 10 mx.badfcrdns
mx.badfcrdns A 192.0.2.40

spf2 MX 10 mx.good
spf2 TXT "v=spf1 mx -all"
spf2 TXT "v=spf1 a -all"
spfall MX 10 mx.good
spfall TXT "v=spf1 mx +all"
spfmany MX 10 mx.good
spfmany TXT "v=spf1 include:_a.spfmany.zz.test include:_b.spfmany.zz.test -all"
_a.spfmany TXT "v=spf1 a mx ptr exists:x.zz.test -all"
_b.spfmany TXT "v=spf1 a mx a:x.zz.test mx:x.zz.test include:_c.spfmany.zz.test -all"
_c.spfmany TXT "v=spf1 a -all"
spfsyntax MX 10 mx.good
spfsyntax TXT "v=spf1 ip4:999.1.1.1 -all"
spfnoinclude MX 10 mx.good
spfnoinclude TXT "v=spf1 include:nothing.zz.test -all"
nospf MX 10 mx.good

dmarcnone MX 10 mx.good
_dmarc.dmarcnone TXT "v=DMARC1; p=none"
dmarcbad MX 10 mx.good
_dmarc.dmarcbad TXT "v=DMARC1; p=bogus"
dmarcext MX 10 mx.good
_dmarc.dmarcext TXT "v=DMARC1; p=reject; rua=mailto:d@reports.zz.test,mailto:x@elsewhere.zz.test"
dmarcext.zz.test._report._dmarc.reports TXT "v=DMARC1"
dmarcextok MX 10 mx.good
_dmarc.dmarcextok TXT "v=DMARC1; p=reject; rua=mailto:d@reports.zz.test"
dmarcextok.zz.test._report._dmarc.reports TXT "v=DMARC1"
dmarctwo MX 10 mx.good
_dmarc.dmarctwo TXT "v=DMARC1; p=reject"
_dmarc.dmarctwo TXT "v=DMARC1; p=none"

dkimweak MX 10 mx.good
{SELECTOR}._domainkey.dkimweak TXT {dkim_txt(public_key(1024))}
dkimtiny MX 10 mx.good
{SELECTOR}._domainkey.dkimtiny TXT {dkim_txt(KEY_512)}
dkimrevoked MX 10 mx.good
{SELECTOR}._domainkey.dkimrevoked TXT "v=DKIM1; k=rsa; p="
dkimnone MX 10 mx.good

stsbad MX 10 mx.good
_mta-sts.stsbad TXT "v=STSv1; id=bad-id!"
tlsrptbad MX 10 mx.good
_smtp._tls.tlsrptbad TXT "v=TLSRPTv1; rua=ftp://x.zz.test"
"""


REVERSE4 = """$ORIGIN 2.0.192.in-addr.arpa.
$TTL 300
@ SOA ns.zz.test. hostmaster.zz.test. 1 3600 600 86400 60
@ NS ns.zz.test.
10 PTR mx.good.zz.test.
40 PTR other.zz.test.
"""

REVERSE6 = """$ORIGIN 8.b.d.0.1.0.0.2.ip6.arpa.
$TTL 300
@ SOA ns.zz.test. hostmaster.zz.test. 1 3600 600 86400 60
@ NS ns.zz.test.
0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 PTR mx.good.zz.test.
"""


def zones() -> dict[str, str]:
    """Zone name -> zone text, for KnotServer and for zone files."""
    return {ZONE: forward_zone(), "2.0.192.in-addr.arpa": REVERSE4, "8.b.d.0.1.0.0.2.ip6.arpa": REVERSE6}


# domain label -> {(check id, subject or None): expected status}
CASES: dict[str, dict[tuple[str, str | None], str]] = {
    "missing": {("domain.exists", None): "fail"},
    "nullmx": {("mx", None): "fail"},
    "mixednull": {("mx", None): "fail", ("mx.address", "mx.good.zz.test"): "pass"},
    "wildmx": {("mx.address", "host.wild.zz.test"): "pass", ("ptr", "192.0.2.99"): "fail"},
    "implicit": {("mx", None): "warn", ("ptr", "192.0.2.10"): "pass", ("fcrdns", "192.0.2.10"): "pass"},
    "nomail": {("mx", None): "fail"},
    "cnamemx": {("mx.target", "alias.cnamemx.zz.test"): "fail"},
    "literalmx": {("mx.target", "192.0.2.10"): "fail"},
    "noaddr": {("mx.address", "mx.noaddr.zz.test"): "fail"},
    "noptr": {("ptr", "192.0.2.30"): "fail", ("fcrdns", "192.0.2.30"): "skip"},
    "badfcrdns": {("ptr", "192.0.2.40"): "pass", ("fcrdns", "192.0.2.40"): "fail"},
    "spf2": {("spf", None): "fail"},
    "spfall": {("spf", None): "fail"},
    "spfmany": {("spf", None): "fail"},
    "spfsyntax": {("spf", None): "fail"},
    "spfnoinclude": {("spf", None): "fail"},
    "nospf": {("spf", None): "warn", ("dmarc", None): "warn"},
    "dmarcnone": {("dmarc", None): "warn"},
    "dmarcbad": {("dmarc", None): "fail"},
    "dmarctwo": {("dmarc", None): "fail"},
    "dmarcext": {("dmarc", None): "warn"},
    "dmarcextok": {("dmarc", None): "pass"},
    "dkimweak": {("dkim", None): "warn"},
    "dkimtiny": {("dkim", None): "fail"},
    "dkimrevoked": {("dkim", None): "fail"},
    "dkimnone": {("dkim", None): "fail"},
    "stsbad": {("mta_sts", None): "fail", ("tls_rpt", None): "warn"},
    "tlsrptbad": {("tls_rpt", None): "fail", ("mta_sts", None): "warn"},
}


def domain(label: str) -> str:
    """The full domain name of a case."""
    return f"{label}.{ZONE}"
