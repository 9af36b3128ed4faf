"""Delivery agents ("couriers"): local (the MDA, into Maildir) and remote (SMTP to other domains)."""
