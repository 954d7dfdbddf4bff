"""The model repository extension of the Open Inference Protocol (as Triton and KServe name it), so a new or
re-exported bundle is served without a restart.

* ``GET`` (or ``POST``, as Triton has it) ``/v2/repository/index``: every bundle folder under
  ``SPARSECODES_MODEL_DIR`` and every served model, with its version and state (``READY`` or ``UNAVAILABLE``
  with the reason). ``POST {"ready": true}`` lists only the ready ones.
* ``POST /v2/repository/models/{name}/load``: (re)load the bundle named ``name`` (its folder is
  ``MODEL_DIR/name``, or the folder whose manifest carries that name), verified and warmed up exactly as at
  start-up. Only a bundle that passes replaces the served version, atomically; a bundle that fails is a 422
  naming the problem and the old version keeps serving. Requests already in flight finish on the old one.
* ``POST /v2/repository/models/{name}/unload``: stop serving ``name``.

Protected by the API key like ``/v1`` and ``/v2/models`` (``web.PROTECTED_PREFIXES``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response

from sparsecodes import bundle
from sparsecodes.errors import BundleError
from sparsecodes.serve.errors import InvalidInput, ModelLoadFailed, UnknownModel
from sparsecodes.serve.openapi import invalidate_openapi
from sparsecodes.serve.runtime import _without_paths, bundle_folders, load_model, resolve_providers
from sparsecodes.serve.web import ERROR_RESPONSES, engine_of, json_response

log = logging.getLogger("sparsecodes.repository")

router = APIRouter(prefix="/v2/repository", tags=["v2 (Open Inference Protocol)"], responses=ERROR_RESPONSES)

_LOCK = "repository_lock"


def _lock(request: Request) -> asyncio.Lock:
    """One load or unload at a time per app (two loads of one name must not interleave their swaps)."""
    state = request.app.state
    if getattr(state, _LOCK, None) is None:
        setattr(state, _LOCK, asyncio.Lock())
    return getattr(state, _LOCK)


def _index(request: Request) -> list[dict[str, Any]]:
    engine = engine_of(request)
    served = dict(engine.models)
    entries: list[dict[str, Any]] = []
    for folder in bundle_folders(engine.settings.model_dir):
        try:
            manifest = bundle.read_manifest(folder)
        except BundleError as e:
            entries.append(
                {
                    "name": folder.name,
                    "version": "",
                    "state": "UNAVAILABLE",
                    "reason": _without_paths(str(e), folder),
                }
            )
            continue
        m = served.get(manifest.name)
        if m is not None and m.path.resolve() == folder.resolve():
            served.pop(manifest.name)
            same = m.manifest.version == manifest.version
            reason = (
                ""
                if same
                else f"serving version {m.manifest.version}; load to serve the bundle's {manifest.version}"
            )
            entries.append(
                {"name": manifest.name, "version": m.manifest.version, "state": "READY", "reason": reason}
            )
            continue
        reason = "not loaded" if m is None else f"the name is served from the bundle folder {m.path.name!r}"
        problem = getattr(request.app.state, "problems", {}).get(str(folder))
        if problem and m is None:
            reason = f"refused: {_without_paths(problem, folder)}"
        entries.append(
            {"name": manifest.name, "version": manifest.version, "state": "UNAVAILABLE", "reason": reason}
        )
    for m in served.values():  # served, but its folder is gone from the model folder
        entries.append(
            {
                "name": m.name,
                "version": m.manifest.version,
                "state": "READY",
                "reason": "its bundle folder is gone",
            }
        )
    return sorted(entries, key=lambda e: (e["name"], e["state"] != "READY"))


@router.api_route(
    "/index",
    methods=["GET", "POST"],
    summary='Model repository index: every bundle and served model, with its state (POST, as Triton has it: '
    '{"ready": true} lists only ready models)',
)
async def index(request: Request) -> Response:
    # One route for both methods, so that a 405 on this path names both in its Allow header.
    entries = _index(request)
    if request.method == "POST" and (await _index_options(request)).get("ready"):
        entries = [e for e in entries if e["state"] == "READY"]
    return json_response(entries)


async def _index_options(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        options = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise InvalidInput('the index request body must be JSON like {"ready": true}') from None
    if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
        raise InvalidInput('the index request body must be JSON like {"ready": true}')
    return options


def _folder_of(model_dir: Path, name: str) -> Path:
    """The bundle folder for ``name``: ``model_dir/name`` when it is one, else the folder whose manifest says
    ``name`` (manifests are read, nothing is hashed)."""
    folders = bundle_folders(model_dir)
    direct = [f for f in folders if f.name == name]
    if direct:
        return direct[0]
    for folder in folders:
        try:
            if bundle.read_manifest(folder).name == name:
                return folder
        except BundleError:
            continue
    raise UnknownModel(f"no bundle named {name!r} in the model folder; GET /v2/repository/index lists them")


@router.post("/models/{name}/load", summary="Load or reload a model from its bundle (verified like start-up)")
async def load(name: str, request: Request) -> Response:
    engine = engine_of(request)
    async with _lock(request):
        folder = _folder_of(engine.settings.model_dir, name)
        old = engine.models.get(name)
        keeps = f"; still serving version {old.manifest.version}" if old is not None else ""
        start = time.perf_counter()
        try:
            providers = resolve_providers(engine.settings.providers)
            runtime = await asyncio.to_thread(functools.partial(load_model, folder, providers, threads=engine.settings.ort_threads))
        except BundleError as e:
            log.error("load of %s from %s refused: %s", name, folder, e)
            raise ModelLoadFailed(
                f"bundle {name!r} refused: {_without_paths(str(e), folder)}{keeps}"
            ) from None
        if runtime.name != name:
            raise ModelLoadFailed(
                f"bundle folder {folder.name!r} holds model {runtime.name!r}, not {name!r}{keeps}"
            )
        await engine.swap_in(runtime)
        invalidate_openapi(request.app)  # the published schema describes the models served now
        getattr(request.app.state, "problems", {}).pop(str(folder), None)
    log.info(
        "loaded model %s version %s (was %s) in %.2fs",
        name,
        runtime.manifest.version,
        old.manifest.version if old is not None else "not served",
        time.perf_counter() - start,
    )
    return json_response(
        {
            "name": name,
            "version": runtime.manifest.version,
            "previous_version": old.manifest.version if old is not None else None,
        }
    )


@router.post("/models/{name}/unload", summary="Stop serving a model")
async def unload(name: str, request: Request) -> Response:
    engine = engine_of(request)
    async with _lock(request):
        m = await engine.remove(name)
        invalidate_openapi(request.app)
    log.info("unloaded model %s version %s", name, m.manifest.version)
    return json_response({"name": name, "version": m.manifest.version})
