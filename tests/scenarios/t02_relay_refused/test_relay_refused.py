"""t02: a stranger cannot use the server as a relay. A client from outside ``smtp.trusted_networks``,
without AUTH, is refused any recipient outside the server's domains (554 5.7.1, RFC 5321 3.6.2 lets a
server decline to relay) while mail for a local user is still accepted; the refusal is logged Postfix
style and nothing is queued. The same client, once authenticated over TLS on 587, may relay.

One ``mailprov serve smtp`` on 127.0.17.30; the stranger and the user connect from 127.0.17.31.
"""

from __future__ import annotations

import smtplib
import ssl

import pytest

from tests.peers.mailprov_server import MailprovTree, run_mailprov

pytestmark = [pytest.mark.peers]

SERVER, CLIENT = "127.0.17.30", "127.0.17.31"


def test_a_stranger_is_refused_relaying_but_a_user_may_relay():
    tree = MailprovTree.create(
        hostname="mx.beta.test",
        domains=["beta.test"],
        ip=SERVER,
        smtp={"trusted_networks": [], "processes": 1},  # loopback is not trusted here: every client is a stranger
        queue={"retry_min": 3600, "retry_max": 3600},
        outbound={"transports": [{"domain": "*", "host": "127.0.17.32", "port": 9, "tls": "none"}]},
    )
    server = None
    try:
        tree.add_user("john@beta.test", "john-secret")
        server = run_mailprov(tree.config_path)
        with smtplib.SMTP(SERVER, tree.ports["smtp"], source_address=(CLIENT, 0), timeout=20) as stranger:
            stranger.ehlo("stranger.test")
            assert stranger.mail("spam@stranger.test")[0] == 250
            code, text = stranger.rcpt("victim@elsewhere.test")
            assert (code, text) == (554, b"5.7.1 <victim@elsewhere.test>: Relay access denied")
            assert stranger.rcpt("john@beta.test")[0] == 250, "mail for a local user is still accepted"
            assert stranger.data(b"Subject: hi\r\n\r\nfor john only\r\n")[0] == 250
        assert not tree.queue_files("incoming") and not tree.queue_files("deferred"), "nothing may be queued for the stranger"
        assert "NOQUEUE: reject: RCPT from unknown[127.0.17.31]: 554 5.7.1 <victim@elsewhere.test>: Relay access denied" in server.log()

        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP(SERVER, tree.ports["submission"], source_address=(CLIENT, 0), timeout=20) as user:
            user.starttls(context=insecure)
            user.login("john@beta.test", "john-secret")
            assert user.sendmail("john@beta.test", ["friend@elsewhere.test"], b"Subject: relay\r\n\r\nok\r\n") == {}
        assert len(tree.queue_files("incoming") + tree.queue_files("active") + tree.queue_files("deferred")) == 1
    finally:
        if server is not None:
            server.stop()
        tree.cleanup()
