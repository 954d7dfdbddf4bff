"""mosec serving the bench encoder (see bench/peer_apps.py): ``python -m bench.peer_mosec ENCODER PORT WORKERS``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from mosec import Server, Worker

from bench.peer_apps import MAX_BATCH, MAX_WAIT_MS, Model, rows_of


class Encode(Worker):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model(Path(os.environ["PEER_ENCODER"]))

    def deserialize(self, data: bytes) -> Any:
        return rows_of(orjson.loads(data))

    def serialize(self, data: Any) -> bytes:
        return orjson.dumps(data)

    def forward(self, data: list[np.ndarray]) -> list[dict[str, Any]]:
        return self.model.run(data)


if __name__ == "__main__":
    encoder, port, workers = sys.argv[1:4]
    os.environ["PEER_ENCODER"] = encoder
    sys.argv = [sys.argv[0], "--port", port, "--address", "127.0.0.1", "--log-level", "warning", "--timeout", "30000"]
    server = Server()
    server.append_worker(Encode, num=int(workers), max_batch_size=MAX_BATCH, max_wait_time=MAX_WAIT_MS)
    server.run()
