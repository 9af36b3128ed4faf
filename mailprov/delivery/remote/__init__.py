"""Delivery to other domains over SMTP: the remote courier and its parts.

* :mod:`.courier` -- :class:`RemoteCourier`, the courier contract: route, TLS policy, per-destination
  slots, hosts in order, results per recipient (its docstring is the manual);
* :mod:`.pool` -- idle connections kept for reuse, and the per-destination limit;
* :mod:`.connect` -- opening a session: connect, EHLO, STARTTLS with plain-text fallback, AUTH;
* :mod:`.transaction` -- one transaction: what to send, the conversation, the replies turned into results;
* :mod:`.pipeline` -- a group of commands in one write and its replies in order (RFC 2920), beside
  aiosmtplib.
"""

from mailprov.delivery.remote.courier import RemoteCourier, result_from_reply, split_reply

__all__ = ["RemoteCourier", "result_from_reply", "split_reply"]
