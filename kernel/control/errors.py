"""The recent errors of the config stores, kept for ``GET /v1/sixgate/config``.

A refused ``apisix.yaml`` or a rejected etcd item is only logged by its store; this handler
keeps the last few of those log records so the control API can show them.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

STORE_LOGGERS = ("sixgate.config", "sixgate.store")
"""The standalone file store logs as ``sixgate.config``, etcd and the embedded store below
``sixgate.store``."""


class ErrorLog(logging.Handler):
    """Keeps the last ``size`` ERROR records of the loggers it is attached to."""

    def __init__(self, size: int = 20) -> None:
        super().__init__(logging.ERROR)
        self.records: deque[dict[str, Any]] = deque(maxlen=size)
        self._attached: list[logging.Logger] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        self.records.append({"at": record.created, "logger": record.name, "message": message})

    def attach(self, names: tuple[str, ...] = STORE_LOGGERS) -> ErrorLog:
        for name in names:
            logger = logging.getLogger(name)
            logger.addHandler(self)
            self._attached.append(logger)
        return self

    def detach(self) -> None:
        for logger in self._attached:
            logger.removeHandler(self)
        self._attached.clear()

    def recent(self) -> list[dict[str, Any]]:
        """Oldest first."""
        return list(self.records)
