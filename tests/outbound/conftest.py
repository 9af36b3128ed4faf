"""Fixtures for the outbound tests: a Knot server with the test zones, and configs that use it.

Everything listens on 127.0.5.0/24 (this area's private range): Knot on 127.0.5.53:5353, SMTP peers on
127.0.5.11-49 port 2525 (``outbound.port``), HTTPS for MTA-STS on 127.0.5.60-69 port 8443.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import require_programs
from tests.outbound.pki import TestCA
from tests.peers.mailprov_server import MailprovTree, run_mailprov

DNS_ADDR, DNS_PORT = "127.0.5.53", 5353
SMTP_PORT = 2525
HTTPS_PORT = 8443

# One zone holds every routing case as a sub-domain of out.test.
OUT_ZONE = """$TTL 60
@           SOA ns.out.test. hostmaster.out.test. 1 3600 600 86400 60
@           NS  ns.out.test.
ns          A   127.0.5.53

; two equal MX hosts and a backup
multi       MX  10 mx1.multi.out.test.
multi       MX  10 mx2.multi.out.test.
multi       MX  20 backup.multi.out.test.
mx1.multi   A   127.0.5.11
mx2.multi   A   127.0.5.12
backup.multi A  127.0.5.13

; MX hosts with several addresses, IPv6 and IPv4
dual        MX  10 mx.dual.out.test.
mx.dual     AAAA ::1
mx.dual     A   127.0.5.14

; plain destinations for courier tests: one MX each
a           MX  10 mx.a.out.test.
mx.a        A   127.0.5.21
b           MX  10 mx.b.out.test.
mx.b        A   127.0.5.22
c           MX  10 mx.c.out.test.
mx.c        A   127.0.5.23
d           MX  10 mx.d.out.test.
mx.d        A   127.0.5.24
; first MX has nothing listening, the second works
fallback    MX  10 dead.fallback.out.test.
fallback    MX  20 live.fallback.out.test.
dead.fallback A 127.0.5.19
live.fallback A 127.0.5.25
; nothing listens anywhere
dead        MX  10 mx.dead.out.test.
mx.dead     A   127.0.5.19
alldead     MX  10 mx1.alldead.out.test.
alldead     MX  20 mx2.alldead.out.test.
mx1.alldead A   127.0.5.19
mx2.alldead A   127.0.5.29

; the domain itself is an alias: processed as if it were the name it points to (RFC 5321 5.1)
aliasdom    CNAME a.out.test.
; no MX: the implicit MX is the domain itself
implicit    A   127.0.5.15
; null MX (RFC 7505)
nullmx      MX  0 .
; MX pointing at an alias (RFC 2181 10.3 says it must not)
cname       MX  10 alias.cname.out.test.
alias.cname CNAME real.cname.out.test.
real.cname  A   127.0.5.16
; MX whose target is written as an IP address, beside a proper one
iplit       MX  10 127.0.5.17.
iplit       MX  20 mx.iplit.out.test.
mx.iplit    A   127.0.5.18
onlyiplit   MX  10 127.0.5.17.
; MX host without any address
noaddr      MX  10 nothing.noaddr.out.test.
; this host is an MX of these domains
loop        MX  10 mail.example.test.
backupme    MX  10 mx.a.out.test.
backupme    MX  20 mail.example.test.
; a name with records but no MX and no address
txtonly     TXT "nothing for mail here"

; MTA-STS: enforce for sts, testing for ststest; HTTPS on 127.0.5.60-61
sts         MX  10 mx.sts.out.test.
sts         MX  20 rogue.sts.out.test.
mx.sts      A   127.0.5.26
rogue.sts   A   127.0.5.27
_mta-sts.sts TXT "v=STSv1; id=20261127a;"
mta-sts.sts A   127.0.5.60
ststest     MX  10 mx.ststest.out.test.
mx.ststest  A   127.0.5.28
_mta-sts.ststest TXT "v=STSv1; id=t1;"
"""


# The acceptance story: alex's server (mail.alpha.test) and john's (mx.beta.test), on this area's range.
ALPHA_IP, BETA_IP, POSTFIX_IP = "127.0.5.100", "127.0.5.101", "127.0.5.102"
DKIM_SELECTOR = "mp1"


def alpha_zone(dkim_txt: str) -> str:
    return f"""$TTL 60
@       SOA ns.alpha.test. hostmaster.alpha.test. 1 3600 600 86400 60
@       NS  ns.alpha.test.
ns      A   127.0.5.53
@       MX  10 mail.alpha.test.
mail    A   {ALPHA_IP}
@       TXT "v=spf1 ip4:{ALPHA_IP} -all"
{DKIM_SELECTOR}._domainkey TXT {dkim_txt}
"""


BETA_ZONE = f"""$TTL 60
@       SOA ns.beta.test. hostmaster.beta.test. 1 3600 600 86400 60
@       NS  ns.beta.test.
ns      A   127.0.5.53
@       MX  10 mx.beta.test.
mx      A   {BETA_IP}
"""

# gamma.test is served by Postfix (the reference MTA as the receiving peer).
GAMMA_ZONE = f"""$TTL 60
@       SOA ns.gamma.test. hostmaster.gamma.test. 1 3600 600 86400 60
@       NS  ns.gamma.test.
ns      A   127.0.5.53
@       MX  10 mx.gamma.test.
mx      A   {POSTFIX_IP}
"""


def make_dkim_key(directory: Path) -> tuple[Path, str]:
    """An RSA 2048 key as 'mailprov dns plan' writes it, and its TXT record in zone-file syntax."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = directory / f"{DKIM_SELECTOR}._domainkey.alpha.test.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)  # root's only, as 'mailprov dns plan' writes it: the server loads it before the drop
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    value = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    chunks = [value[i : i + 250] for i in range(0, len(value), 250)]
    return path, "( " + " ".join(f'"{c}"' for c in chunks) + " )"


@pytest.fixture(scope="session")
def knot(tmp_path_factory: pytest.TempPathFactory):
    """Knot serving out.test, alpha.test, beta.test and gamma.test on 127.0.5.53:5353 for the session;
    ``knot.dkim_key`` is alpha.test's DKIM private key (its public half is in the zone)."""
    require_programs("knotd")
    from tests.peers.knot import KnotServer

    workdir = tmp_path_factory.mktemp("knot")
    key_path, txt = make_dkim_key(workdir)
    zones = {"out.test": OUT_ZONE, "alpha.test": alpha_zone(txt), "beta.test": BETA_ZONE, "gamma.test": GAMMA_ZONE}
    server = KnotServer(workdir, DNS_ADDR, DNS_PORT, zones)
    server.start()
    server.dkim_key = key_path  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def out_config(make_config, tmp_path: Path):
    """A config whose outbound resolver is the test Knot and whose MX port is the peers' port."""

    def build(outbound: dict | None = None, queue: dict | None = None, **sections):
        values = {
            "resolvers": [f"{DNS_ADDR}:{DNS_PORT}"],
            "port": SMTP_PORT,
            "connect_timeout": 5,
            "command_timeout": 10,
            "mta_sts": False,
        }
        values.update(outbound or {})
        return make_config(outbound=values, queue=queue or {}, **sections)

    return build


def world_readable_dir(prefix: str) -> Path:
    """A temporary directory outside pytest's (mode 0700) tree, so that Postfix and the test servers,
    which run as other users, can reach what is inside."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def test_ca():
    """A test CA; its ``ca_file`` is readable by every user."""
    directory = world_readable_dir("mailprov-out-ca-")
    yield TestCA(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def servers():
    """Start mailprov servers; every one started is stopped and its tree removed afterwards."""
    started = []

    def start(tree: MailprovTree, **kwargs):
        proc = run_mailprov(tree.config_path, **kwargs)
        started.append((tree, proc))
        return proc

    yield start
    for _tree, proc in started:
        proc.stop()
    for tree, _ in started:
        tree.cleanup()
