"""Structured logging: one JSON object per line (or plain text), carrying the request id."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime

import orjson

# Extra attributes a log call may pass (``log.info(..., extra={...})``) that end up as JSON fields.
FIELDS = ("request_id", "method", "path", "route", "status", "duration_ms", "model", "client", "rows")


_TOKEN = r"(?!\[redacted\])[^\s'\",;)\]}]+"
_BEARER = re.compile(rf"\b(bearer\s+){_TOKEN}", re.IGNORECASE)
_AUTHORIZATION = re.compile(  # atomic groups: a quote or a scheme once matched is not given back as the "token"
    rf"(authorization['\"]?\s*[:=,](?>\s*(?:b?['\"])?)(?>(?:(?:bearer|basic)\s+)?)){_TOKEN}", re.IGNORECASE
)


def redact(text: str) -> str:
    """``text`` with any ``Authorization`` value or bearer token replaced by ``[redacted]``: no log line may
    carry a key, whoever logs it (uvicorn's WebSocket layer once logged every header at debug level)."""
    lower = text.lower()
    if "bearer" not in lower and "authorization" not in lower:
        return text
    return _AUTHORIZATION.sub(r"\1[redacted]", _BEARER.sub(r"\1[redacted]", text))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which worker, with SPARSECODES_WORKERS > 1
            "message": redact(record.getMessage()),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        rid = getattr(record, "request_id", None)
        return f"{text} [request_id={rid}]" if rid else text


def configure_logging(fmt: str, level: str) -> None:
    """Route the service's and uvicorn's loggers through one handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for name in ("sparsecodes", "uvicorn", "uvicorn.error", "websockets"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    # Requests are logged once, by the service's middleware, with their request id.
    logging.getLogger("uvicorn.access").disabled = True
