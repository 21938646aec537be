"""How ``hashmesh serve`` writes its log: human lines or one JSON object per line.

Layer: node.cli.

``[log] format = "json"`` (or ``serve --log-format json``) writes each record
as one JSON object on one line, for journald, Loki or Elasticsearch::

    {"time": "2026-11-28T10:31:02.412Z", "level": "INFO", "logger": "hashmesh.access",
     "message": "api hotline-b(peer) POST /v1/match 200 551B 0.012s hashes=2 hits=1",
     "listener": "api", "peer": "hotline-b", "role": "peer", "route": "/v1/match", ...}

The access log's fields (:mod:`node.api.access`) are top-level keys, so a
log system can filter on ``route`` or ``status`` without parsing the message.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (newlines in messages are escaped)."""
        ms = int(record.msecs)
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            doc.update(access)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure_logging(
    *, level: str, fmt: str, stream: TextIO, access: bool = True
) -> Callable[[], None]:
    """Send every log record of ``level`` or above to ``stream`` as ``fmt`` (text or json).

    Replaces the root logger's handlers, so calling it again (tests) does
    not write each record twice. ``access=False`` silences the access log.
    Returns a function that puts the root logger back as it was: a command run
    in-process (tests, embedding) must not leave a handler on a stream that is
    closed after it returns.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    previous_handlers, previous_level = list(root.handlers), root.level
    access_logger = logging.getLogger("hashmesh.access")
    aiohttp_access = logging.getLogger("aiohttp.access")
    previous_access, previous_aiohttp = access_logger.level, aiohttp_access.level
    for old in previous_handlers:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access logger is off (node.api.access writes ours).
    aiohttp_access.setLevel(logging.WARNING)
    access_logger.setLevel(logging.NOTSET if access else logging.WARNING)

    def restore() -> None:
        root.removeHandler(handler)
        for old in previous_handlers:
            root.addHandler(old)
        root.setLevel(previous_level)
        access_logger.setLevel(previous_access)
        aiohttp_access.setLevel(previous_aiohttp)

    return restore
