"""The peer servers of ``bench/peers.py``, each serving the bench bundle's ``encoder.onnx`` the way its
documentation shows: micro-batching on (up to 64 requests, 2 ms, as sparsecodes), JSON in
(``{"inputs": [[...], ...]}``), the sparse code out as JSON (``{"codes": [{"indices", "values"}, ...]}``,
the shape of sparsecodes' float answer), orjson both ways, the service's own ONNX Runtime session options.

Each peer is a module of its own (its worker classes must be importable by name in its worker processes):
``python -m bench.peer_mosec ENCODER PORT WORKERS``, ``python -m bench.peer_litserve …``. Needs the ``peers``
extra."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sparsecodes import bundle
from sparsecodes.codes import SparseCodes

MAX_BATCH = 64
MAX_WAIT_MS = 2


class Model:
    """The encoder and the JSON rendering every peer shares."""

    def __init__(self, encoder: Path) -> None:
        self.session = bundle.open_session(encoder, "encoder")

    def run(self, requests: list[np.ndarray]) -> list[dict[str, Any]]:
        x = np.concatenate(requests) if len(requests) > 1 else requests[0]
        codes = SparseCodes.from_dense(self.session.run(None, {bundle.ENCODER_INPUT: x})[0])
        bounds = codes.indptr.tolist()
        indices, values = codes.indices.tolist(), codes.values.tolist()
        rows = [{"indices": indices[a:b], "values": values[a:b]} for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        out, start = [], 0
        for r in requests:
            out.append({"codes": rows[start : start + len(r)]})
            start += len(r)
        return out


def rows_of(body: dict[str, Any]) -> np.ndarray:
    return np.asarray(body["inputs"], dtype=np.float32)
