"""``sparsecodes serve``: run the service with uvicorn.

Command-line flags override the ``SPARSECODES_*`` environment. ``--demo`` serves the demo bundles shipped in the
package when the model folder holds none (no torch, no training).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from sparsecodes.errors import CommandError
from sparsecodes.serve.settings import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, default=None, help="model folder (default: SPARSECODES_MODEL_DIR or ./models)")
    p.add_argument("--host", default=None, help="interface to bind (default: SPARSECODES_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: SPARSECODES_PORT or 8000)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: SPARSECODES_WORKERS or 1)")
    p.add_argument("--demo", action="store_true", help="serve the demo bundles shipped in the package if the model folder has none")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    overrides = {k: v for k, v in {"model_dir": args.models, "host": args.host, "port": args.port, "workers": args.workers}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        raise CommandError(f"invalid setting SPARSECODES_{str(e.errors()[0]['loc'][0]).upper()}: {e.errors()[0]['msg']}") from None
    _check_providers(settings.providers)
    # Both before any work (the demo bundles, loading models): a typo must not cost a wait.
    _check_port_free(settings.host, settings.port)
    if not args.demo and not settings.model_dir.is_dir():
        raise CommandError(
            f"model folder {settings.model_dir} does not exist; pass --models FOLDER (or SPARSECODES_MODEL_DIR) "
            "naming a folder of exported bundles, or --demo to serve the demo bundles"
        )
    if args.demo:
        settings = settings.model_copy(update={"model_dir": _demo_dir(settings.model_dir)})
    serve(settings)
    return 0


def _check_providers(spec: str) -> None:
    from sparsecodes.serve.runtime import resolve_providers

    try:
        resolve_providers(spec)
    except ValueError as e:
        raise CommandError(str(e)) from None


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port something else already listens on, naming the flag and the variable that change it
    (uvicorn would only log an error after start-up). Binding without SO_REUSEPORT, as uvicorn does."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"port {port} on {host} is already in use; choose another with --port N "
                    "(or SPARSECODES_PORT=N), or stop what listens there"
                ) from None
            if e.errno == errno.EACCES:
                raise CommandError(f"no permission to listen on port {port} on {host}; choose --port N above 1023") from None
            raise CommandError(f"cannot listen on {host}:{port}: {e.strerror}; check --host and --port") from None


def _demo_dir(model_dir: Path) -> Path:
    """The folder ``--demo`` serves: ``model_dir`` when it holds bundles; else the demo bundles shipped in
    the package, in place (no copy, so a read-only root filesystem is fine; no torch, no training). A
    checkout without them (deleted) builds them into ``model_dir`` in a child process (needs the train extra)."""
    from sparsecodes.bundle import DEMO_BUNDLES
    from sparsecodes.serve.runtime import bundle_folders

    if bundle_folders(model_dir):
        return model_dir
    if bundle_folders(DEMO_BUNDLES):
        print(f"no bundles in {model_dir}: serving the demo bundles shipped in the package ({DEMO_BUNDLES})", flush=True)
        return DEMO_BUNDLES
    print(f"no bundles in {model_dir} and none shipped: training the demo models (a few minutes)…", flush=True)
    # In a child process: the serving process never imports torch or the training code.
    command = [sys.executable, "-m", "sparsecodes", "demo", "--models", str(model_dir)]
    if subprocess.run(command, check=False).returncode != 0:
        raise CommandError(f"building the demo bundles failed ({shlex.join(command)}); see the output above")
    return model_dir


def serve(settings: Settings) -> None:
    """Run uvicorn with ``settings`` until SIGINT/SIGTERM (then in-flight requests finish first)."""
    import uvicorn

    from sparsecodes.serve.app import create_app
    from sparsecodes.serve.http.server import server_options

    common = server_options(settings)
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    # Worker processes build their own app from the environment: hand them these settings through it.
    os.environ.update(settings.env())
    uvicorn.run("sparsecodes.serve.app:app_from_env", factory=True, workers=settings.workers, **common)
