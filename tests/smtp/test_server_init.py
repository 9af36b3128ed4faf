"""MailprovSMTP builds aiosmtpd's per-connection state itself (cached method tables, for speed). This
checks that the result matches aiosmtpd's own constructor attribute for attribute, so an aiosmtpd
upgrade that adds or renames state fails here instead of misbehaving on the wire."""

from __future__ import annotations

import asyncio

from mailprov.limits import ConnectionLimiter, FailureThrottle, LocalAuthThrottle
from mailprov.smtp.handler import SMTPHandler
from mailprov.smtp.server import MailprovSMTP, SMTPContext


def test_fast_init_matches_aiosmtpd(make_config):
    cfg = make_config()
    ctx = SMTPContext(cfg, None, None, None, LocalAuthThrottle(FailureThrottle(1, 3)), ConnectionLimiter(10, 10))  # type: ignore[arg-type]

    async def build(fast: bool) -> MailprovSMTP:
        handler = SMTPHandler(ctx, "mx")
        return MailprovSMTP(
            handler,
            ctx=ctx,
            fast_init=fast,
            hostname="mx.test",
            ident="ESMTP mailprov",
            data_size_limit=1000,
            enable_SMTPUTF8=True,
            tls_context=None,
            require_starttls=False,
            auth_required=False,
            auth_require_tls=True,
            timeout=30.0,
            loop=asyncio.get_running_loop(),
        )

    async def main():
        fast, slow = await build(True), await build(False)
        skip = {"_closed", "_stream_reader_wr", "_strong_reader", "event_handler", "_handle_hooks", "_auth_methods", "_smtp_methods"}
        assert set(vars(fast)) == set(vars(slow))
        for name in set(vars(fast)) - skip:
            a, b = getattr(fast, name), getattr(slow, name)
            if not callable(a):
                assert a == b, name
        assert set(fast._handle_hooks) == set(slow._handle_hooks)
        assert set(fast._smtp_methods) == set(slow._smtp_methods)
        assert {k: v.is_builtin for k, v in fast._auth_methods.items()} == {k: v.is_builtin for k, v in slow._auth_methods.items()}
        assert fast._auth_methods["PLAIN"].method.__self__ is fast.event_handler  # ours, not aiosmtpd's

    asyncio.run(main())
