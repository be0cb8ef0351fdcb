"""Error-log setup: stderr plus ``nginx_config.error_log``, at ``error_log_level``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "crit": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emerg": logging.CRITICAL,
}
FORMAT = "%(asctime)s [%(levelname)s] %(process)d %(name)s: %(message)s"


def setup_logging(level: str, error_log: Path | None) -> None:
    """Route the ``sixgate`` loggers to stderr and, when given, to ``error_log``."""
    root = logging.getLogger("sixgate")
    root.setLevel(LEVELS.get(level, logging.WARNING))
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    root.addHandler(stderr)
    if error_log is not None:
        error_log.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(error_log)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    for name in ("kernel", "builtin_plugins", "plugin_sdk"):
        other = logging.getLogger(name)
        other.handlers = root.handlers
        other.setLevel(root.level)
        other.propagate = False
