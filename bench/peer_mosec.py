"""mosec serving the bench encoder (see bench/peer_apps.py): ``python -m bench.peer_mosec ENCODER PORT WORKERS``.

mosec (0.9.8, the latest release) hangs under concurrent load by itself: its worker's side of the IPC protocol
(``mosec.protocol.Protocol.receive``) reads each task's fixed-size header fields (id, state, length) with a bare
``socket.recv(n)``, which may return fewer than ``n`` bytes. Once a batch is larger than the Unix socket's
buffer (208 KiB here: 32 single-row JSON requests of ~7.5 KB already are), a header falls across a read, the
stream is out of step from then on, and the worker waits for a message that never comes while the Rust side
answers every queued request ``408 inference timeout`` after ``--timeout`` (seen: W1 stalled at 32 clients,
never at 16). :func:`_receive` below is the same protocol with every field read in full; with it mosec
completes every W1 and W2 request. It also stops at a closed socket: mosec's ``_recv_all`` loops on a
zero-byte read, so workers whose server was killed kept spinning.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from mosec import Server, Worker
from mosec import protocol as mosec_protocol

from bench.peer_apps import MAX_BATCH, MAX_WAIT_MS, Model, rows_of


def _receive(self: mosec_protocol.Protocol) -> tuple[bytes, list[bytes], list[int], list[bytes]]:
    """``Protocol.receive`` (flag, batch size, then per task: id, state, length, payload), each read in full."""

    def read(n: int) -> bytes:
        buffer = bytearray(n)
        view, got = memoryview(buffer), 0
        while got < n:
            chunk = self.socket.recv_into(view[got:])
            if chunk == 0:  # mosec's own ``_recv_all`` spins here for ever (seen: orphaned workers at 58 % CPU)
                raise ConnectionError("mosec's IPC socket closed")
            got += chunk
        return bytes(buffer)

    flag = read(2)
    (batch,) = struct.unpack("!H", read(2))
    ids, states, payloads = [], [], []
    for _ in range(batch):
        ids.append(read(4))
        states.append(struct.unpack("!H", read(2))[0])
        (length,) = struct.unpack("!I", read(4))
        payloads.append(read(length))
    return flag, ids, states, payloads


mosec_protocol.Protocol.receive = _receive  # in the worker processes too: they import this module


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
