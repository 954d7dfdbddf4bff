"""LitServe serving the bench encoder (see bench/peer_apps.py): ``python -m bench.peer_litserve ENCODER PORT WORKERS``."""

import os
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import orjson
from fastapi import Response

from bench.peer_apps import MAX_BATCH, MAX_WAIT_MS, Model, rows_of


class Encode(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = Model(Path(os.environ["PEER_ENCODER"]))

    def decode_request(self, request):  # unannotated: LitServe then passes the parsed JSON body
        return rows_of(request)

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return inputs

    def predict(self, x: list[np.ndarray]) -> list[dict[str, Any]]:
        return self.model.run(x)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> Response:
        return Response(orjson.dumps(output), media_type="application/json")


if __name__ == "__main__":
    encoder, port, workers = sys.argv[1:4]
    os.environ["PEER_ENCODER"] = encoder
    server = ls.LitServer(
        Encode(max_batch_size=MAX_BATCH, batch_timeout=MAX_WAIT_MS / 1000), accelerator="cpu", workers_per_device=int(workers)
    )
    server.run(host="127.0.0.1", port=int(port), num_api_servers=1, generate_client_file=False, log_level="warning")
