"""Logging set-up shared by every mailprov process: one line per event, in the mail-log shape."""

from __future__ import annotations

import logging
import sys

from mailprov.config import Config


def setup_logging(config: Config) -> None:
    """One line per event, ``mailprov/<component>[pid]: message``, to stderr or ``paths.log_file``."""
    handler: logging.Handler
    if config.paths.log_file:
        handler = logging.FileHandler(config.paths.log_file)
        fmt = "%(asctime)s " + config.server.hostname + " %(name)s[%(process)d]: %(levelname)s %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(name)s[%(process)d]: %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("mailprov")
    root.handlers[:] = [handler]
    root.setLevel(config.server.log_level.upper())
    root.propagate = False
