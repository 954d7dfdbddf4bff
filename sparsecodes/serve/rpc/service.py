"""The KServe v2 gRPC service, in the HTTP server's event loop, over the same :class:`Engine`.

So gRPC requests share the HTTP side's models, micro-batches (a gRPC row and an HTTP row can run in one ONNX
Runtime call), code cache, API keys (metadata ``authorization: Bearer <key>``) and Prometheus metrics
(``sparsecodes_request_duration_seconds`` with ``route="/grpc/<Method>"``). Tensors as in ``/v2`` over HTTP:
one input ``x`` (FP32 ``[n, d_in]``, raw little-endian bytes in ``raw_input_contents`` or
``contents.fp32_contents``); outputs ``indptr`` (INT64), ``indices`` (INT64), ``values`` (FP32) and, when
asked for, ``x_hat`` (FP32 ``[n, d_in]``), always answered as ``raw_output_contents``. Parameter
``max_active`` (int64) caps L0. Errors are gRPC status codes with the same messages as over HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from sparsecodes.serve import codec, metrics
from sparsecodes.serve.engine import Engine
from sparsecodes.serve.errors import (
    InternalError,
    InvalidInput,
    NotReady,
    ServiceError,
    UnknownModel,
    status_of,
)
from sparsecodes.serve.oip import SERVER_NAME, model_metadata_of
from sparsecodes.serve.parse import ALL_OUTPUTS, CODE_OUTPUTS, check_infer_shape
from sparsecodes.serve.rpc import oip_pb2 as pb
from sparsecodes.serve.runtime import ModelRuntime, refused_models
from sparsecodes.serve.settings import Settings
from sparsecodes.serve.web import check_api_key

log = logging.getLogger("sparsecodes.grpc")

_CODE = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
         413: grpc.StatusCode.RESOURCE_EXHAUSTED, 422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}
_OPEN = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})
"""Methods that need no API key (the HTTP side's probes and /v2 are open too)."""


class State:
    """What the service reads from the app at each call (the engine appears only once models are loaded)."""

    def __init__(self, app_state: Any, in_flight: Callable[[], Any]) -> None:
        self.app_state = app_state
        self.in_flight = in_flight

    @property
    def engine(self) -> Engine | None:
        return getattr(self.app_state, "engine", None)


SERVICE = "inference.GRPCInferenceService"
"""The protocol's service name: method paths are ``/inference.GRPCInferenceService/<Method>``."""

METHODS: dict[str, tuple[type[Any], type[Any]]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}
"""Each method's request and response message."""


class InferenceService:
    def __init__(self, state: State, settings: Settings) -> None:
        self.state = state
        self.settings = settings

    # -- plumbing shared by every method -------------------------------------------------------------------

    async def _call(
        self, method: str, context: grpc.aio.ServicerContext, model: str, work: Callable[[Engine], Awaitable[Any]]
    ) -> Any:
        """Key check, in-flight count, latency metric, one log line; a ``ServiceError`` becomes a status."""
        start = time.perf_counter()
        status = 200
        counter = self.state.in_flight()
        counter.n += 1
        metrics.REQUESTS_IN_FLIGHT.inc()
        try:
            if self.settings.api_keys and method not in _OPEN:
                check_api_key(dict(context.invocation_metadata() or ()).get("authorization"), self.settings.api_keys)
            engine = self.state.engine
            if engine is None or not engine.ready:
                if method in _OPEN:
                    return await work(engine)  # type: ignore[arg-type]
                raise NotReady("models are not loaded yet, or the server is shutting down")
            return await work(engine)
        except ServiceError as e:
            status = status_of(e)
            await context.abort(_CODE.get(status, grpc.StatusCode.INTERNAL), e.message)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            status = 500
            log.error("unhandled error in gRPC %s: %s", method, e, exc_info=e)
            await context.abort(grpc.StatusCode.INTERNAL, InternalError(f"internal error in {method}").message)
        finally:
            counter.n -= 1
            metrics.REQUESTS_IN_FLIGHT.dec()
            engine = self.state.engine
            known = model if engine is not None and model in engine.models else ""
            metrics.REQUEST_DURATION.labels(route=f"/grpc/{method}", model=known, status=str(status)).observe(
                time.perf_counter() - start
            )
            if method not in _OPEN:
                log.info("gRPC %s %s %d", method, model, status, extra={"route": f"/grpc/{method}", "status": status})

    @staticmethod
    def _model(engine: Engine, name: str, version: str) -> ModelRuntime:
        m = engine.model(name)
        if version and version != m.manifest.version:
            raise UnknownModel(f"model {name!r} has version {m.manifest.version!r}, not {version!r}")
        return m

    # -- the protocol's methods ----------------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        async def work(_: Engine | None) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, "", work)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        async def work(engine: Engine | None) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=engine is not None and engine.ready and bool(engine.models))

        return await self._call("ServerReady", context, "", work)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        from sparsecodes import __version__

        async def work(_: Engine | None) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

        return await self._call("ServerMetadata", context, "", work)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        async def work(engine: Engine) -> pb.ModelReadyResponse:
            if request.name not in engine.models:
                refused = refused_models(getattr(self.state.app_state, "problems", {}))
                if request.name in refused:
                    return pb.ModelReadyResponse(ready=False)
            self._model(engine, request.name, request.version)
            return pb.ModelReadyResponse(ready=True)

        return await self._call("ModelReady", context, request.name, work)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        async def work(engine: Engine) -> pb.ModelMetadataResponse:
            meta = model_metadata_of(self._model(engine, request.name, request.version))
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
            )

        return await self._call("ModelMetadata", context, request.name, work)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        async def work(engine: Engine) -> pb.ModelInferResponse:
            m = self._model(engine, request.model_name, request.model_version)
            x = input_rows(request, m.d_in, self.settings.max_rows)
            names = requested_outputs(request)
            codes = await engine.encode(m, x, max_active(request))
            arrays: dict[str, tuple[str, np.ndarray]] = {
                "indptr": ("INT64", codes.indptr.astype("<i8", copy=False)),
                "indices": ("INT64", codes.indices.astype("<i8", copy=False)),
                "values": ("FP32", codes.values.astype("<f4", copy=False)),
            }
            if "x_hat" in names:
                x_hat = await engine.decode(m, codes)
                engine.observe_error(m, x, x_hat)
                arrays["x_hat"] = ("FP32", x_hat.astype("<f4", copy=False))
            return pb.ModelInferResponse(
                model_name=m.name, model_version=m.manifest.version, id=request.id,
                outputs=[
                    pb.ModelInferResponse.InferOutputTensor(name=n, datatype=arrays[n][0], shape=list(arrays[n][1].shape))
                    for n in names
                ],
                raw_output_contents=[arrays[n][1].tobytes() for n in names],
            )

        return await self._call("ModelInfer", context, request.model_name, work)


# -- request → arrays (pure; the same checks and messages as the HTTP /v2 parser) ---------------------------


def input_rows(request: pb.ModelInferRequest, d_in: int, max_rows: int) -> np.ndarray:
    if len(request.inputs) != 1:
        raise InvalidInput("inputs must be a list holding one tensor named 'x' (FP32, shape [n, d_in])")
    t = request.inputs[0]
    if t.name != "x":
        raise InvalidInput(f"unknown input {t.name!r}; this model takes one input named 'x'")
    if t.datatype != "FP32":
        raise InvalidInput(f"input x has datatype {t.datatype!r}; expected FP32")
    shape = check_infer_shape(list(t.shape), d_in, max_rows)
    need = shape[0] * shape[1]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(f"raw_input_contents has {len(request.raw_input_contents)} entries; expected 1 (for x)")
        raw = request.raw_input_contents[0]
        if len(raw) != need * 4:
            raise InvalidInput(f"input x has {len(raw)} raw bytes but its shape {shape} needs {need * 4} (FP32, little-endian)")
        data = np.frombuffer(raw, dtype="<f4")
    elif t.contents.fp32_contents:
        data = np.asarray(t.contents.fp32_contents, dtype=np.float32)
        if data.size != need:
            raise InvalidInput(f"input x has {data.size} values but its shape {shape} needs {need}")
    else:
        raise InvalidInput("input x has no data: send raw_input_contents or contents.fp32_contents")
    return codec.check_matrix(data.reshape(shape), d_in, "x", max_rows)


def requested_outputs(request: pb.ModelInferRequest) -> list[str]:
    if not request.outputs:
        return list(CODE_OUTPUTS)
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in ALL_OUTPUTS]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown[:5]}; this model has outputs {list(ALL_OUTPUTS)}")
    return names


def max_active(request: pb.ModelInferRequest) -> int | None:
    if "max_active" not in request.parameters:
        return None
    p = request.parameters["max_active"]
    kind = p.WhichOneof("parameter_choice")
    value = getattr(p, kind) if kind else None
    if kind not in ("int64_param", "uint64_param") or value < 1:
        raise InvalidInput(f"parameter max_active must be a positive integer, got {value!r}"[:200])
    return int(value)


# -- the server ---------------------------------------------------------------------------------------------


async def start(state: State, settings: Settings) -> grpc.aio.Server:
    """A started gRPC server on ``settings.host:settings.grpc_port`` in the running event loop. Port reuse is
    on (gRPC's default), so ``SPARSECODES_WORKERS`` processes share the port as they share the HTTP one."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1),
        ],
        maximum_concurrent_rpcs=settings.max_connections,
    )
    service = InferenceService(state, settings)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(service, name), request_deserializer=request.FromString, response_serializer=response.SerializeToString
        )
        for name, (request, response) in METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    address = f"{settings.host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot listen for gRPC on {address}")
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s", address)
    return server
