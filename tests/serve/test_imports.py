"""The service never imports torch or the training code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.loadgen import free_port

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from pathlib import Path
from sparsecodes.serve.app import create_app
from sparsecodes.serve.client import Client, AsyncClient
from sparsecodes.serve.settings import Settings
import sparsecodes.serve.cli, bench.serve
from sparsecodes.cli import build_parser
build_parser(["serve"])
app = create_app(Settings(model_dir=Path(sys.argv[1]), grpc_port=int(sys.argv[2])))  # gRPC served too
import asyncio, httpx
async def main():
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            assert (await c.get("/v1/models")).status_code == 200
asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith(("sparsecodes.train", "sparsecodes.export")))
print("LOADED:" + ",".join(loaded))
"""


def test_service_app_loads_no_torch_or_training(model_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(model_dir), str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("LOADED:"))
    assert line == "LOADED:", line
