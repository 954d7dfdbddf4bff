"""Reading a request body within the bounds its route implies, before anything is parsed.

``SPARSECODES_MAX_BODY_BYTES`` alone let a 26 MiB body of 2 million unknown option keys through to the
parser (pydantic then built 2 million errors: 23–88 s on the event loop) and a 64 MiB body of numbers
stall every other client 9.3 s. A route knows how many values a valid request can carry (``max_rows`` rows
of ``d_in`` numbers, or of ``2·d_served + 1`` for codes), and so:

* a JSON body may hold at most that many separators (``,``, counted as the chunks arrive: C speed, once the
  body is longer than the count could be), and be at most :data:`JSON_BYTES_PER_VALUE` bytes per value;
* a binary body at most :data:`BINARY_BYTES_PER_VALUE` bytes per value (int64 is the widest dtype);
* both at most ``SPARSECODES_MAX_BODY_BYTES``;

each refused with 413 as soon as it is known: from ``Content-Length`` before a byte is read, else while the
body streams in. A client that goes away mid-body is no server error: :class:`ClientClosedRequest` (499).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from sparsecodes.serve.errors import ClientClosedRequest, PayloadTooLarge, RequestTimeout
from sparsecodes.serve.http.call import Call
from sparsecodes.serve.http.protocol import TIMEOUT_SCOPE_KEY

JSON_BYTES_PER_VALUE = 64
"""Room per number in a JSON body: 25 characters print any float32 or int64, and pretty-printing with deep
indentation adds at most ~30 (base64 needs 5.4 bytes per float32)."""
BINARY_BYTES_PER_VALUE = 8
HEAD_ROOM_BYTES = 64 * 1024
"""Bytes for everything besides the values (options, field names, a binary body's header)."""
HEAD_ROOM_VALUES = 1024
"""Separators besides those between values (options, row objects' keys)."""


@dataclass(frozen=True)
class BodyLimits:
    """What one request's body may hold."""

    max_bytes: int
    max_separators: int | None
    """Most ``,`` in a JSON body; ``None`` for a binary body (not counted)."""
    source: str
    """Which limit ``max_bytes`` is, for the 413 message."""

    @classmethod
    @functools.cache  # a few models × two encodings: computed once, not per request
    def for_rows(cls, max_body_bytes: int, max_rows: int, values_per_row: int, binary: bool) -> BodyLimits:
        values = max_rows * values_per_row
        per_value = BINARY_BYTES_PER_VALUE if binary else JSON_BYTES_PER_VALUE
        implied = per_value * values + HEAD_ROOM_BYTES
        if implied >= max_body_bytes:
            return cls(max_body_bytes, None if binary else values + HEAD_ROOM_VALUES, "SPARSECODES_MAX_BODY_BYTES")
        source = (
            f"what {max_rows} rows (SPARSECODES_MAX_ROWS) of {values_per_row} values need at "
            f"{per_value} bytes per value in a {'binary' if binary else 'JSON'} body"
        )
        return cls(implied, None if binary else values + HEAD_ROOM_VALUES, source)


def _too_large(size: int | None, limits: BodyLimits) -> PayloadTooLarge:
    got = f"of {size} bytes " if size is not None else ""
    return PayloadTooLarge(f"request body {got}exceeds the limit of {limits.max_bytes} bytes ({limits.source})")


def _content_length(call: Call) -> int | None:
    declared = call.header(b"content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


async def read_body(call: Call, limits: BodyLimits) -> bytes:
    """The whole body, refused (413) as soon as it is known to break ``limits``."""
    declared = _content_length(call)
    if declared is not None and declared > limits.max_bytes:
        raise _too_large(declared, limits)
    counting = limits.max_separators is not None and (declared is None or declared > limits.max_separators)
    chunks: list[bytes] = []
    size = separators = 0
    receive = call.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _gone(call)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limits.max_bytes:
            raise _too_large(None, limits)
        if counting:
            separators += chunk.count(b",")
            if separators > limits.max_separators:  # type: ignore[operator]
                raise PayloadTooLarge(
                    f"the JSON body holds more than {limits.max_separators} values and fields; a request carries at "
                    "most SPARSECODES_MAX_ROWS rows (split the batch)"
                )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _gone(call: Call) -> Exception:
    if call.scope.get(TIMEOUT_SCOPE_KEY):
        return RequestTimeout("the request body arrived too slowly (SPARSECODES_BODY_TIMEOUT_S)")
    return ClientClosedRequest("the client closed the connection before its request body arrived")
