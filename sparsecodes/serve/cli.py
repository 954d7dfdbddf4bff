"""``sparsecodes serve``: run the service with uvicorn.

Command-line flags override the ``SPARSECODES_*`` environment. ``--demo`` fills an empty model folder with
the demo bundles first, in a child process (``sparsecodes demo``), so the server never imports torch.
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
    p.add_argument("--demo", action="store_true", help="train and export the demo bundles if the model folder has none")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    overrides = {k: v for k, v in {"model_dir": args.models, "host": args.host, "port": args.port, "workers": args.workers}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        raise CommandError(f"invalid setting SPARSECODES_{str(e.errors()[0]['loc'][0]).upper()}: {e.errors()[0]['msg']}") from None
    _check_providers(settings.providers)
    if args.demo:
        _fill_demo(settings.model_dir)
    serve(settings)
    return 0


def _check_providers(spec: str) -> None:
    from sparsecodes.serve.runtime import resolve_providers

    try:
        resolve_providers(spec)
    except ValueError as e:
        raise CommandError(str(e)) from None


def _fill_demo(model_dir: Path) -> None:
    from sparsecodes.serve.runtime import bundle_folders

    if bundle_folders(model_dir):
        return
    print(f"no bundles in {model_dir}: training the demo models (a few minutes)…", flush=True)
    # In a child process: the serving process never imports torch or the training code.
    command = [sys.executable, "-m", "sparsecodes", "demo", "--models", str(model_dir)]
    if subprocess.run(command, check=False).returncode != 0:
        raise CommandError(f"building the demo bundles failed ({shlex.join(command)}); see the output above")


def _share_metrics() -> None:
    """Prometheus multiprocess mode for the workers: a fresh folder (or the one ``PROMETHEUS_MULTIPROC_DIR``
    names, emptied of an earlier run's values), set in the environment before any worker imports the metrics,
    and removed at exit when it was made here."""
    import atexit
    import shutil
    import tempfile

    from sparsecodes.serve.metrics import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return
    folder = tempfile.mkdtemp(prefix="sparsecodes-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


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
    _share_metrics()
    uvicorn.run("sparsecodes.serve.app:app_from_env", factory=True, workers=settings.workers, **common)
