"""mailprov: check a mail domain's DNS first, then deploy and run a small, durable mail server."""

__version__ = "0.1.0"
