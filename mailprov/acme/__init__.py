"""Certificates from an ACME CA (RFC 8555): ``decisions`` (pure: renewal, clock, problems), ``issuer`` (the steps)."""
