"""Launchers for the real peer programs the tests drive (Knot, Unbound, Postfix, Dovecot, sshd, ...).

Each module starts a private instance on a loopback address chosen by the caller, waits until it
answers, and stops it (a context manager or a fixture-friendly start/stop pair). Every process a test
starts, it stops.
"""
