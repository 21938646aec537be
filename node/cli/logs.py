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


def configure_logging(*, level: str, fmt: str, stream: TextIO, access: bool = True) -> None:
    """Send every log record of ``level`` or above to ``stream`` as ``fmt`` (text or json).

    Replaces the root logger's handlers, so calling it again (tests) does
    not write each record twice. ``access=False`` silences the access log.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access logger is off (node.api.access writes ours).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("hashmesh.access").setLevel(logging.NOTSET if access else logging.WARNING)
