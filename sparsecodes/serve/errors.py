"""Domain errors and the one table that maps them to HTTP statuses.

The layers below HTTP (runtime, codecs, cache) raise these; ``app.py`` turns every one into a response
``{"error": {"type", "message", "request_id"}}`` with the status from :data:`STATUS`. Bad input is always
a 4xx naming the problem; a 500 is reserved for failures of the service itself.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base: ``type`` is the machine-readable name in the error body, the message says what and why."""

    type = "service_error"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class InvalidInput(ServiceError):
    """Well-formed request whose contents are wrong (vector length, NaN, index out of range, ...)."""

    type = "invalid_input"


class MalformedBody(ServiceError):
    """A body that cannot be parsed at all (bad JSON, bad base64, truncated binary)."""

    type = "malformed_body"


class UnsupportedMediaType(ServiceError):
    type = "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    """Too many rows or bytes for one request (``SPARSECODES_MAX_ROWS`` / ``SPARSECODES_MAX_BODY_BYTES``)."""

    type = "payload_too_large"


class UnknownModel(ServiceError):
    type = "model_not_found"


class RouteNotFound(ServiceError):
    type = "not_found"


class MethodNotAllowed(ServiceError):
    type = "method_not_allowed"


class Unauthorized(ServiceError):
    type = "unauthorized"


class NotReady(ServiceError):
    """Models not loaded yet, or the server is shutting down."""

    type = "not_ready"


class RequestTimeout(ServiceError):
    """The request head or body did not arrive in time (``SPARSECODES_HEADER_TIMEOUT_S`` / ``_BODY_TIMEOUT_S``)."""

    type = "request_timeout"


class HeaderTooLarge(ServiceError):
    """A request head over ``SPARSECODES_MAX_HEADER_BYTES`` or with more than ``SPARSECODES_MAX_HEADERS`` fields."""

    type = "request_header_too_large"


class ServerBusy(ServiceError):
    """Over ``SPARSECODES_MAX_CONNECTIONS``: refused at once, before a request is read."""

    type = "server_busy"


class ClientClosedRequest(ServiceError):
    """The client went away before its request body arrived: nobody to answer, nothing to alert on.

    Recorded as 499 (nginx's "client closed request") in the request metrics and log, never as a 5xx."""

    type = "client_closed_request"


class UnprocessableOutput(ServiceError):
    """Finite inputs whose result overflows float32 inside the model (e.g. rows of ±3e38): the caller's rows
    are outside the model's numeric range, so a 422, and nothing is cached or counted."""

    type = "output_not_finite"


class InferenceFailed(ServiceError):
    """ONNX Runtime raised while running a graph: the service's fault, not the caller's."""

    type = "inference_error"


class ModelLoadFailed(ServiceError):
    """A repository load whose bundle fails verification or warm-up; the version served before stays."""

    type = "model_load_failed"


class InternalError(ServiceError):
    type = "internal_error"


STATUS: dict[type[ServiceError], int] = {
    MalformedBody: 400,
    Unauthorized: 401,
    UnknownModel: 404,
    RouteNotFound: 404,
    MethodNotAllowed: 405,
    RequestTimeout: 408,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    UnprocessableOutput: 422,
    ModelLoadFailed: 422,
    HeaderTooLarge: 431,
    ClientClosedRequest: 499,
    InferenceFailed: 500,
    InternalError: 500,
    NotReady: 503,
    ServerBusy: 503,
}


def status_of(error: ServiceError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(error: ServiceError, request_id: str | None = None) -> dict[str, dict[str, str]]:
    body = {"type": error.type, "message": error.message}
    if request_id:
        body["request_id"] = request_id
    return {"error": body}
