"""RemoteCourier against scripted aiosmtpd peers found by MX in Knot: replies, failures, reuse, TLS, AUTH."""

from __future__ import annotations

import asyncio
import ssl
import time

import pytest

from mailprov.delivery.base import Envelope, Outcome
from mailprov.delivery.remote import RemoteCourier, split_reply
from tests.outbound.conftest import SMTP_PORT
from tests.outbound.scripted import Script, ScriptedPeer, server_context

pytestmark = pytest.mark.peers

MESSAGE = b"From: alex@example.test\r\nTo: x@a.out.test\r\nSubject: hi\r\n\r\nhello\r\n.leading dot\r\n"


def envelope(*rcpts: str, sender: str = "alex@example.test", qid: str = "Q1") -> Envelope:
    return Envelope(qid, sender, tuple(rcpts), time.time())


def deliver(config, env: Envelope, message: bytes = MESSAGE, **kwargs):
    async def run():
        courier = RemoteCourier(config, **kwargs)
        try:
            return await courier.deliver(env, message)
        finally:
            await courier.close()

    return asyncio.run(run())


def test_split_reply():
    assert split_reply(250, "2.0.0 Ok: queued as X") == ("2.0.0", "Ok: queued as X")
    assert split_reply(550, "5.1.1 <a@b>: unknown\n5.1.1 really") == ("5.1.1", "<a@b>: unknown really")
    assert split_reply(451, "try later") == ("4.0.0", "try later")
    assert split_reply(451, "5.1.1 mismatched class") == ("4.0.0", "5.1.1 mismatched class")


def test_delivers_by_mx(knot, out_config):
    with ScriptedPeer("127.0.5.21", SMTP_PORT) as peer:
        results = deliver(out_config(), envelope("john@a.out.test"))
    result = results["john@a.out.test"]
    assert result.outcome is Outcome.DELIVERED, result
    assert result.relay == "mx.a.out.test[127.0.5.21]:2525"
    assert result.code == 250 and result.enhanced == "2.0.0" and result.message == "Ok: queued as S1"
    assert set(result.timings) >= {"dns", "wait", "connect", "xfer"}
    (got,) = peer.handler.received
    assert got.sender == "alex@example.test" and got.recipients == ["john@a.out.test"]
    assert peer.handler.helo_names == ["mail.example.test"]  # EHLO with server.hostname
    # Dot-stuffing is undone by the server: the body arrives as sent.
    assert got.content.replace(b"\r\n", b"\n").endswith(b"hello\n.leading dot\n")


def test_null_sender_goes_out_as_empty_path(knot, out_config):
    with ScriptedPeer("127.0.5.21", SMTP_PORT) as peer:
        results = deliver(out_config(), envelope("john@a.out.test", sender=""))
    assert results["john@a.out.test"].ok
    assert peer.handler.received[0].sender == "<>"  # aiosmtpd shows the empty path as <>


def test_4xx_defers_then_5xx_bounces_with_the_reply(knot, out_config):
    replies = iter(["451 4.3.0 greylisted, try again", "550 5.1.1 <john@a.out.test>: no such user"])
    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(rcpt=lambda a: next(replies))):
        first = deliver(out_config(), envelope("john@a.out.test"))["john@a.out.test"]
        second = deliver(out_config(), envelope("john@a.out.test"))["john@a.out.test"]
    assert first.outcome is Outcome.TEMPORARY and first.code == 451 and first.enhanced == "4.3.0"
    assert first.message == "greylisted, try again"
    assert second.outcome is Outcome.PERMANENT and second.code == 550 and second.enhanced == "5.1.1"
    assert "no such user" in second.message and second.relay == "mx.a.out.test[127.0.5.21]:2525"


def test_recipients_are_decided_one_by_one(knot, out_config):
    def rcpt(address: str) -> str | None:
        return {"busy@a.out.test": "452 4.2.2 mailbox full", "gone@a.out.test": "550 5.1.1 gone"}.get(address)

    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(rcpt=rcpt)) as peer:
        results = deliver(out_config(), envelope("ok@a.out.test", "busy@a.out.test", "gone@a.out.test"))
    assert results["ok@a.out.test"].outcome is Outcome.DELIVERED
    assert results["busy@a.out.test"].outcome is Outcome.TEMPORARY
    assert results["gone@a.out.test"].outcome is Outcome.PERMANENT
    assert [r.recipients for r in peer.handler.received] == [["ok@a.out.test"]]


def test_several_domains_in_one_call(knot, out_config):
    with ScriptedPeer("127.0.5.21", SMTP_PORT) as pa, ScriptedPeer("127.0.5.22", SMTP_PORT) as pb:
        results = deliver(out_config(), envelope("x@a.out.test", "y@b.out.test", "z@nullmx.out.test"))
    assert results["x@a.out.test"].ok and results["y@b.out.test"].ok
    assert results["z@nullmx.out.test"].outcome is Outcome.PERMANENT and results["z@nullmx.out.test"].enhanced == "5.1.10"
    assert len(pa.handler.received) == len(pb.handler.received) == 1


def test_data_rejection_applies_to_every_accepted_recipient(knot, out_config):
    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(data=lambda n: "554 5.7.1 content rejected")):
        results = deliver(out_config(), envelope("a1@a.out.test", "a2@a.out.test"))
    assert {r.outcome for r in results.values()} == {Outcome.PERMANENT}
    assert all(r.enhanced == "5.7.1" for r in results.values())


def test_sender_rejection(knot, out_config):
    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(mail=lambda s: "553 5.7.1 sender not allowed")):
        results = deliver(out_config(), envelope("a1@a.out.test"))
    assert results["a1@a.out.test"].outcome is Outcome.PERMANENT and results["a1@a.out.test"].code == 553


def test_stalling_peer_times_out_and_defers(knot, out_config):
    config = out_config({"command_timeout": 1})
    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(stall_data=3)) as peer:
        result = deliver(config, envelope("john@a.out.test"))["john@a.out.test"]
    assert result.outcome is Outcome.TEMPORARY and result.enhanced == "4.4.2"
    assert "timed out" in result.message and "end of DATA" in result.message
    assert peer.handler.received == []


def test_drop_in_the_middle_of_data_defers(knot, out_config):
    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(drop_in_data=True)):
        result = deliver(out_config(), envelope("john@a.out.test"))["john@a.out.test"]
    assert result.outcome is Outcome.TEMPORARY and "lost connection" in result.message


def test_421_defers_and_drops_the_connection(knot, out_config):
    replies = iter(["421 4.3.2 shutting down", None])

    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(rcpt=lambda a: next(replies))) as peer:

        async def run():
            courier = RemoteCourier(out_config())
            first = await courier.deliver(envelope("john@a.out.test"), MESSAGE)
            second = await courier.deliver(envelope("john@a.out.test"), MESSAGE)
            await courier.close()
            return first, second

        first, second = asyncio.run(run())
    assert first["john@a.out.test"].outcome is Outcome.TEMPORARY and first["john@a.out.test"].code == 421
    assert second["john@a.out.test"].ok
    assert peer.handler.received[0].session == 2  # not sent over the connection the server was closing


def test_nothing_listening_defers_naming_the_host(knot, out_config):
    result = deliver(out_config(), envelope("john@dead.out.test"))["john@dead.out.test"]
    assert result.outcome is Outcome.TEMPORARY and result.enhanced == "4.4.1"
    assert result.relay == "mx.dead.out.test[127.0.5.19]:2525" and "refused" in result.message.lower()


def test_every_failed_host_is_named_when_none_works(knot, out_config):
    result = deliver(out_config(), envelope("john@alldead.out.test"))["john@alldead.out.test"]
    assert result.outcome is Outcome.TEMPORARY and result.relay == "mx2.alldead.out.test[127.0.5.29]:2525"
    assert "mx1.alldead.out.test[127.0.5.19]:2525" in result.message and "mx2.alldead.out.test[127.0.5.29]:2525" in result.message


def test_next_mx_is_tried_when_the_first_is_down(knot, out_config):
    with ScriptedPeer("127.0.5.25", SMTP_PORT) as peer:
        result = deliver(out_config(), envelope("john@fallback.out.test"))["john@fallback.out.test"]
    assert result.ok and result.relay == "live.fallback.out.test[127.0.5.25]:2525"
    assert len(peer.handler.received) == 1


def test_dns_failure_defers(knot, out_config):
    result = deliver(out_config(), envelope("john@elsewhere.invalid"))["john@elsewhere.invalid"]
    assert result.outcome is Outcome.TEMPORARY and result.enhanced == "4.4.3"


def test_connection_is_reused_for_the_next_message(knot, out_config):
    with ScriptedPeer("127.0.5.21", SMTP_PORT) as peer:

        async def run():
            courier = RemoteCourier(out_config())
            for i in range(5):
                result = await courier.deliver(envelope("john@a.out.test", qid=f"Q{i}"), MESSAGE)
                assert result["john@a.out.test"].ok
            await courier.close()

        asyncio.run(run())
    assert len(peer.handler.received) == 5
    assert {r.session for r in peer.handler.received} == {1}


def test_per_destination_limit_holds(knot, out_config):
    config = out_config(queue={"per_destination": 2})
    # Each DATA takes a second: long enough that both allowed deliveries overlap even on a busy machine.
    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(stall_data=1.0)) as peer:

        async def run():
            courier = RemoteCourier(config)
            results = await asyncio.gather(*(courier.deliver(envelope("john@a.out.test", qid=f"Q{i}"), MESSAGE) for i in range(6)))
            await courier.close()
            return results

        results = asyncio.run(run())
    assert all(r["john@a.out.test"].ok for r in results)
    assert peer.handler.max_active == 2
    assert len(set(r.session for r in peer.handler.received)) == 2


def test_message_larger_than_peer_size_bounces_before_data(knot, out_config):
    with ScriptedPeer("127.0.5.21", SMTP_PORT, data_size_limit=50) as peer:
        result = deliver(out_config(), envelope("john@a.out.test"))["john@a.out.test"]
    assert result.outcome is Outcome.PERMANENT and result.code == 552 and result.enhanced == "5.3.4"
    assert peer.handler.received == []


def test_address_literal_delivery(knot, out_config):
    with ScriptedPeer("127.0.5.30", SMTP_PORT) as peer:
        result = deliver(out_config(), envelope("john@[127.0.5.30]"))["john@[127.0.5.30]"]
    assert result.ok and peer.handler.received[0].recipients == ["john@[127.0.5.30]"]


# -- TLS ----------------------------------------------------------------------------------------


def test_verify_policy_checks_certificate_and_mx_name(knot, out_config, test_ca):
    good = test_ca.issue("mx.a.out.test")
    config = out_config({"tls_policies": {"a.out.test": "verify"}})
    with ScriptedPeer("127.0.5.21", SMTP_PORT, tls_context=server_context(str(good.cert), str(good.key))) as peer:
        result = deliver(config, envelope("john@a.out.test"), ca_file=str(test_ca.ca_file))["john@a.out.test"]
        untrusted = deliver(config, envelope("john@a.out.test"))["john@a.out.test"]  # system CAs only
    assert result.ok and peer.handler.received[0].tls
    assert untrusted.outcome is Outcome.TEMPORARY and untrusted.enhanced == "4.7.5" and "certificate" in untrusted.message
    assert len(peer.handler.received) == 1


def test_verify_policy_refuses_a_certificate_for_another_name(knot, out_config, test_ca):
    wrong = test_ca.issue("other.out.test")
    config = out_config({"tls_policies": {"a.out.test": "verify"}})
    with ScriptedPeer("127.0.5.21", SMTP_PORT, tls_context=server_context(str(wrong.cert), str(wrong.key))) as peer:
        result = deliver(config, envelope("john@a.out.test"), ca_file=str(test_ca.ca_file))["john@a.out.test"]
        # The same certificate is fine for opportunistic TLS: encrypted, not authenticated.
        lax = deliver(out_config(), envelope("john@a.out.test"), ca_file=str(test_ca.ca_file))["john@a.out.test"]
    assert result.outcome is Outcome.TEMPORARY and "mx.a.out.test" in result.message
    assert lax.ok and [r.tls for r in peer.handler.received] == [True]


def test_require_policy_defers_when_starttls_is_missing(knot, out_config):
    config = out_config({"tls": "require"})
    with ScriptedPeer("127.0.5.21", SMTP_PORT) as peer:
        result = deliver(config, envelope("john@a.out.test"))["john@a.out.test"]
    assert result.outcome is Outcome.TEMPORARY and result.enhanced == "4.7.10" and "STARTTLS" in result.message
    assert peer.handler.received == []


def test_opportunistic_tls_is_used_when_offered(knot, out_config, test_ca):
    cert = test_ca.issue("mx.a.out.test")
    with ScriptedPeer("127.0.5.21", SMTP_PORT, tls_context=server_context(str(cert.cert), str(cert.key))) as peer:
        assert deliver(out_config(), envelope("john@a.out.test"))["john@a.out.test"].ok
        assert deliver(out_config({"tls": "none"}), envelope("john@a.out.test"))["john@a.out.test"].ok
    assert [r.tls for r in peer.handler.received] == [True, False]


# -- transports ---------------------------------------------------------------------------------


def test_relayhost_with_auth(knot, out_config, tmp_path):
    (tmp_path / "relay.pw").write_text("s3cret\n")
    transport = {"domain": "*", "host": "127.0.5.40", "port": 2587, "username": "alex", "password_file": str(tmp_path / "relay.pw")}
    config = out_config({"transports": [transport]})
    with ScriptedPeer("127.0.5.40", 2587, credentials=("alex", "s3cret")) as peer:
        # The domain has no DNS at all: the relayhost takes everything.
        result = deliver(config, envelope("someone@nowhere.invalid"))["someone@nowhere.invalid"]
    assert result.ok and result.relay == "127.0.5.40[127.0.5.40]:2587"
    assert peer.handler.auth == [("alex", "s3cret")]


def test_relayhost_refusing_the_password_defers(knot, out_config, tmp_path):
    (tmp_path / "relay.pw").write_text("wrong\n")
    transport = {"domain": "a.out.test", "host": "127.0.5.40", "port": 2587, "username": "alex"}
    transport["password_file"] = str(tmp_path / "relay.pw")
    with ScriptedPeer("127.0.5.40", 2587, credentials=("alex", "s3cret")) as peer:
        result = deliver(out_config({"transports": [transport]}), envelope("john@a.out.test"))["john@a.out.test"]
    assert result.outcome is Outcome.TEMPORARY and result.enhanced == "4.7.8"
    assert "wrong" not in result.message and peer.handler.received == []


def test_transport_with_implicit_tls(knot, out_config, test_ca):
    cert = test_ca.issue("relay.out.test", addresses=("127.0.5.41",))
    transport = {"domain": "a.out.test", "host": "127.0.5.41", "port": 2465, "implicit_tls": True, "tls": "verify"}
    with ScriptedPeer("127.0.5.41", 2465, implicit_tls=server_context(str(cert.cert), str(cert.key))) as peer:
        result = deliver(out_config({"transports": [transport]}), envelope("john@a.out.test"), ca_file=str(test_ca.ca_file))
    assert result["john@a.out.test"].ok and peer.handler.received[0].tls


def test_failed_opportunistic_handshake_falls_back_to_plain_text(knot, out_config, test_ca):
    cert = test_ca.issue("mx.a.out.test")
    context = server_context(str(cert.cert), str(cert.key))
    # The server demands a client certificate we do not have: the handshake fails.
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(str(test_ca.ca_file))
    with ScriptedPeer("127.0.5.21", SMTP_PORT, tls_context=context) as peer:
        lax = deliver(out_config(), envelope("john@a.out.test"))["john@a.out.test"]
        strict = deliver(out_config({"tls": "require"}), envelope("john@a.out.test"))["john@a.out.test"]
    assert lax.ok and [r.tls for r in peer.handler.received] == [False]
    assert strict.outcome is Outcome.TEMPORARY and strict.enhanced == "4.7.5"


def test_unsendable_address_fails_alone(knot, out_config):
    with ScriptedPeer("127.0.5.21", SMTP_PORT) as peer:
        results = deliver(out_config(), envelope("good@a.out.test", "bad\x01x@a.out.test"))
    assert results["good@a.out.test"].ok
    bad = results["bad\x01x@a.out.test"]
    assert bad.outcome is Outcome.PERMANENT and bad.enhanced == "5.1.3"
    assert [r.recipients for r in peer.handler.received] == [["good@a.out.test"]]


def test_non_ascii_address_needs_smtputf8(knot, out_config):
    with ScriptedPeer("127.0.5.21", SMTP_PORT, smtputf8=False) as peer:
        refused = deliver(out_config(), envelope("jürgen@a.out.test"))["jürgen@a.out.test"]
    assert refused.outcome is Outcome.PERMANENT and refused.code == 553 and refused.enhanced == "5.6.7"
    assert peer.handler.received == []
    with ScriptedPeer("127.0.5.21", SMTP_PORT) as peer:
        assert deliver(out_config(), envelope("jürgen@a.out.test"))["jürgen@a.out.test"].ok
    assert peer.handler.received[0].recipients == ["jürgen@a.out.test"]


def test_implicit_tls_with_an_untrusted_certificate_defers(knot, out_config, test_ca):
    cert = test_ca.issue("relay.out.test", addresses=("127.0.5.41",))
    transport = {"domain": "a.out.test", "host": "127.0.5.41", "port": 2465, "implicit_tls": True, "tls": "verify"}
    with ScriptedPeer("127.0.5.41", 2465, implicit_tls=server_context(str(cert.cert), str(cert.key))) as peer:
        result = deliver(out_config({"transports": [transport]}), envelope("john@a.out.test"))["john@a.out.test"]  # system CAs
    assert result.outcome is Outcome.TEMPORARY and result.enhanced == "4.7.5" and "certificate" in result.message
    assert peer.handler.received == []


def test_many_recipients_go_in_batches_of_fifty_over_one_connection(knot, out_config):
    rcpts = [f"user{i}@a.out.test" for i in range(120)]
    with ScriptedPeer("127.0.5.21", SMTP_PORT) as peer:
        results = deliver(out_config(), envelope(*rcpts))
    failed = {r: results[r] for r in rcpts if not results[r].ok}
    assert not failed, f"{len(failed)} not delivered, e.g. {next(iter(failed.items()))}"
    assert [len(r.recipients) for r in peer.handler.received] == [50, 50, 20]
    assert {r.session for r in peer.handler.received} == {1}
