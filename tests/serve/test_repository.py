"""The model repository extension (/v2/repository): a new or re-exported bundle is served without a restart,
verified like start-up; a bundle that fails leaves the old version serving; the API key protects it.

A real server (uvicorn on loopback) over a real model folder, hand-made ONNX bundles run by ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparsecodes import bundle
from sparsecodes.fsutil import replace_dir
from tests.support.handmade import build_bundle
from tests.support.server import check_error, run_server

KEY = "repo-key"
AUTH = {"authorization": f"Bearer {KEY}"}


def export_again(root: Path, name: str, seed: int) -> str:
    """Re-export ``name`` the way ``sparsecodes export --force`` publishes: built aside, swapped in whole."""
    staging = build_bundle(root.parent / f"staging-{seed}", name, seed=seed)
    replace_dir(staging, root / name)
    return bundle.read_manifest(root / name).version


def test_index_load_reload_refuse_and_unload(tmp_path: Path) -> None:
    root = tmp_path / "models"
    v0 = build_bundle(root, "alpha", seed=0) and bundle.read_manifest(root / "alpha").version
    x = {"inputs": np.random.default_rng(5).normal(size=(3, 16)).astype(np.float32).tolist()}
    with run_server(model_dir=root, api_keys=[KEY]) as s, s.client(headers=AUTH) as c:
        with s.client() as anonymous:
            check_error(anonymous.get("/v2/repository/index"), 401, "unauthorized")
            check_error(anonymous.post("/v2/repository/models/alpha/load"), 401, "unauthorized")
            check_error(anonymous.post("/v2/repository/models/alpha/unload"), 401, "unauthorized")
        assert "model_repository" in c.get("/v2").json()["extensions"]
        assert c.get("/v2/repository/index").json() == [
            {"name": "alpha", "version": v0, "state": "READY", "reason": ""}
        ]
        before = c.post("/v1/models/alpha/encode", json=x).json()

        # A new bundle: listed as not loaded, then served after a load.
        build_bundle(root, "beta", seed=3)
        beta = {e["name"]: e for e in c.post("/v2/repository/index", json={}).json()}["beta"]
        assert beta["state"] == "UNAVAILABLE" and beta["reason"] == "not loaded"
        assert [e["name"] for e in c.post("/v2/repository/index", json={"ready": True}).json()] == ["alpha"]
        check_error(c.get("/v2/models/beta"), 404, "model_not_found")
        loaded = c.post("/v2/repository/models/beta/load")
        assert loaded.status_code == 200 and loaded.json()["previous_version"] is None, loaded.text
        assert c.post("/v1/models/beta/encode", json=x).status_code == 200

        # Re-exported: the old version serves until the load, the new one after it.
        v1 = export_again(root, "alpha", seed=1)
        assert v1 != v0
        alpha = {e["name"]: e for e in c.get("/v2/repository/index").json()}["alpha"]
        assert alpha["version"] == v0 and v1 in alpha["reason"]
        assert c.post("/v1/models/alpha/encode", json=x).json()["codes"] == before["codes"]
        reloaded = c.post("/v2/repository/models/alpha/load").json()
        assert reloaded == {"name": "alpha", "version": v1, "previous_version": v0}
        assert c.get("/v2/models/alpha").json()["versions"] == [v1]
        after = c.post("/v1/models/alpha/encode", json=x).json()
        assert after["version"] == v1 and after["codes"] != before["codes"]

        # A damaged re-export is refused as at start-up; version v1 keeps serving.
        export_again(root, "alpha", seed=2)
        with open(root / "alpha" / bundle.ENCODER_FILE, "ab") as f:
            f.write(b"\0")
        refused = c.post("/v2/repository/models/alpha/load")
        check_error(refused, 422, "model_load_failed", "encoder.onnx", f"still serving version {v1}")
        assert str(tmp_path) not in refused.text
        assert c.get("/v2/models/alpha").json()["versions"] == [v1]
        assert c.post("/v1/models/alpha/encode", json=x).json()["codes"] == after["codes"]

        # Unload: gone from serving, still in the index; unknown names are a 404.
        assert c.post("/v2/repository/models/beta/unload").json()["name"] == "beta"
        check_error(c.post("/v1/models/beta/encode", json=x), 404, "model_not_found")
        assert {e["name"]: e["state"] for e in c.get("/v2/repository/index").json()}["beta"] == "UNAVAILABLE"
        check_error(c.post("/v2/repository/models/beta/unload"), 404, "model_not_found")
        check_error(c.post("/v2/repository/models/nope/load"), 404, "model_not_found", "/v2/repository/index")
        assert c.get("/v2/health/ready").status_code == 200
