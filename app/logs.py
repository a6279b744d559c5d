"""Structured logging: one JSON object per line, with the node name on every line and
the user and connection ids where there are any. Never tokens, never message bodies:
only fields passed explicitly through ``extra=`` (from a fixed list) are emitted."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import tornado.web

FIELDS = ("user", "conn", "code", "reason", "last_seq", "cursor", "method", "path",
          "status", "ms", "ip")


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str, node: str) -> None:
    """Configure the root logger: ``fmt`` is ``json`` (one object per line) or ``text``."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pgserver").setLevel(logging.WARNING)


access_log = logging.getLogger("herald.access")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's ``log_function``: the path without its query string (which could carry
    secrets someone put there), status and duration."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    access_log.log(level, "request", extra={
        "method": request.method, "path": request.path, "status": status,
        "ms": round(request.request_time() * 1000, 2), "ip": request.remote_ip})
