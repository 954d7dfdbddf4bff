"""Security: API keys (401 without one, never logged or exported, compared in constant time), nothing
unpickled anywhere, bundle files verified against the manifest before they are loaded, and model names in
URLs that cannot reach outside the model folder. (Non-root, read-only containers and chart: tests/deploy.)"""

from __future__ import annotations

import ast
import hmac
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.load import start_server
from sparsecodes import bundle
from sparsecodes.bundle import BundleError
from sparsecodes.serve import web
from sparsecodes.serve.errors import Unauthorized
from sparsecodes.serve.runtime import load_model

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["sk-live-7f3a-FIRSTSECRET", "sk-live-91bc-SECONDSECRET"]
WRONG = "sk-live-0000-WRONGSECRET"


@pytest.mark.timeout(90)
def test_api_keys_are_required_and_never_logged_or_exported(model_dir: Path, tmp_path: Path) -> None:
    env = {"SPARSECODES_API_KEYS": ",".join(KEYS), "SPARSECODES_LOG_LEVEL": "debug"}
    server = start_server(model_dir, tmp_path / "server.log", env=env)
    row = {"inputs": [[0.5] * 64]}
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            protected = [
                ("GET", "/v1/models", None), ("GET", "/v1/models/digits-topk", None),
                ("POST", "/v1/models/digits-topk/encode", row), ("POST", "/v1/models/digits-topk/denoise", row),
                ("POST", "/v1/models/digits-topk/decode", {"codes": [{"indices": [1], "values": [1.0]}]}),
                ("GET", "/v2/models/digits-topk", None), ("GET", "/v2/models/digits-topk/ready", None),
                ("POST", "/v2/models/digits-topk/infer", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}),
                ("GET", "/v1/models/no-such-model", None),  # even whether a model exists needs a key
            ]
            texts = []
            for method, path, body in protected:
                for headers in ({}, {"authorization": f"Bearer {WRONG}"}, {"authorization": WRONG}, {"authorization": f"Basic {KEYS[0]}"}):
                    response = c.request(method, path, json=body, headers=headers)
                    assert response.status_code == 401, (method, path, headers, response.text)
                    assert response.json()["error"]["type"] == "unauthorized"
                    texts.append(response.text)
                good = c.request(method, path, json=body, headers={"authorization": f"Bearer {KEYS[1]}"})
                assert good.status_code == (404 if "no-such" in path else 200), (path, good.text)
                texts.append(good.text)
            for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json", "/docs", "/v2"):
                response = c.get(path)
                assert response.status_code == 200, path
                texts.append(response.text)
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "unauthorized" in log or "401" in log  # the refusals were logged...
    for secret in ("FIRSTSECRET", "SECONDSECRET", "WRONGSECRET"):  # ...but no key, good or bad, anywhere
        assert secret not in log, secret
        assert not any(secret in text for text in texts), secret


def test_key_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured key is compared, as a fixed-length digest, whether or not an earlier one matched."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(web.hmac, "compare_digest", spy)
    keys = ["short", "a-much-longer-key-of-another-length", "third"]
    for given, accepted in (("short", True), ("third", True), ("x", False), ("x" * 500, False)):
        calls.clear()
        if accepted:
            web.check_api_key(f"Bearer {given}", keys)
        else:
            with pytest.raises(Unauthorized):
                web.check_api_key(f"Bearer {given}", keys)
        assert calls == [(32, 32)] * len(keys), (given, calls)


# -- nothing is unpickled -------------------------------------------------------------------------------------

PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _source_files() -> list[Path]:
    return sorted(p for d in ("service", "export", "training", "sparsecodes") for p in (ROOT / d).rglob("*.py"))


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str) -> object:
    for kw in node.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_no_code_path_unpickles_anything() -> None:
    problems = []
    files = _source_files()
    assert len(files) > 30
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                problems += [f"{where} imports {n}" for n in names if n.split(".")[0] in PICKLING_MODULES]
            elif isinstance(node, ast.Call):
                name = _call_name(node)
                if name == "torch.load" and _keyword(node, "weights_only") is not True:
                    problems.append(f"{where} torch.load without weights_only=True")
                if name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not False:
                    problems.append(f"{where} np.load without allow_pickle=False")
                if name.endswith(("read_pickle", "pickle.loads", "pickle.load")):
                    problems.append(f"{where} {name}")
    assert problems == []


class _Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(model_dir / "digits-topk", folder)
    return folder


def _rehash(folder: Path, role: str) -> None:
    """Make the manifest vouch for the file as it is now (an attacker who can also write the manifest)."""
    manifest = bundle.read_manifest(folder)
    files = dict(manifest.files)
    files[role] = bundle.file_entry(folder, files[role].path)
    bundle.write_manifest(folder, manifest.model_copy(update={"files": files, "version": bundle.content_version(files)}))


def test_a_pickled_examples_file_is_refused_without_running_it(model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(model_dir, tmp_path)
    marker = tmp_path / "pwned"
    np.save(folder / bundle.EXAMPLES_FILE, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    _rehash(folder, bundle.EXAMPLES_ROLE)  # even a bundle whose manifest vouches for the file
    with pytest.raises(BundleError, match="not a float array"):
        load_model(folder, ["CPUExecutionProvider"])
    assert not marker.exists()


def test_bundle_files_are_verified_before_loading(model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(model_dir, tmp_path)
    (folder / bundle.ENCODER_FILE).write_bytes((folder / bundle.DECODER_FILE).read_bytes())  # a valid graph, the wrong one
    with pytest.raises(BundleError, match="size is|does not match"):
        load_model(folder, ["CPUExecutionProvider"])


@pytest.mark.parametrize("how", ["dotdot", "symlink", "absolute"])
def test_manifest_entries_cannot_point_outside_the_bundle(model_dir: Path, tmp_path: Path, how: str) -> None:
    folder = _copy(model_dir, tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.move(folder / bundle.ENCODER_FILE, outside)
    if how == "symlink":
        (folder / bundle.ENCODER_FILE).symlink_to(outside)
        _rehash(folder, "encoder")
    else:
        target = "../outside.onnx" if how == "dotdot" else str(outside)
        manifest = bundle.read_manifest(folder)
        files = dict(manifest.files)
        files["encoder"] = files["encoder"].model_copy(update={"path": target})
        bundle.write_manifest(folder, manifest.model_copy(update={"files": files}))
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_model(folder, ["CPUExecutionProvider"])


# -- model names in URLs ----------------------------------------------------------------------------------


def test_model_names_cannot_reach_outside_the_model_folder(model_dir: Path, tmp_path: Path) -> None:
    """A served folder with one bundle and, beside it (outside), another: no URL reaches the outside one."""
    from tests.support.server import run_server

    served = tmp_path / "served"
    served.mkdir()
    shutil.copytree(model_dir / "digits-topk", served / "digits-topk")
    shutil.copytree(model_dir / "digits-softsae", tmp_path / "secret")
    names = ["secret", "..", "..%2Fsecret", "%2E%2E%2Fsecret", "digits-topk%2F..%2F..%2Fsecret", "..%5Csecret",
             "secret%00", "%00", "x" * 5000, "%C3%A9t%C3%A9", "digits-softsae", str(tmp_path / "secret").replace("/", "%2F")]
    row = {"inputs": [[0.5] * 64]}
    with run_server(model_dir=served) as s, s.client() as c:
        for name in names:
            for method, path in (("GET", f"/v1/models/{name}"), ("POST", f"/v1/models/{name}/encode"),
                                 ("GET", f"/v2/models/{name}/ready"), ("POST", f"/v2/models/{name}/infer")):
                response = c.request(method, path, json=row)
                assert response.status_code == 404, (method, path, response.status_code, response.text[:200])
        assert [m["name"] for m in c.get("/v1/models").json()["models"]] == ["digits-topk"]
