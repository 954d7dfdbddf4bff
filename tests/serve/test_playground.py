"""The web playground: its endpoints over HTTP, and the page itself end to end in headless Chromium.

The browser is Debian's ``chromium`` driven by Playwright (``executable_path``; no browser download). The
real app runs under uvicorn on a loopback port with bundles exported from trained runs: an image model
(SoftSAE on 8×8 digits) and a vector model (SOSAE on the union-of-subspaces set). Screenshots of each
state go to ``test-artifacts/playground/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sparsecodes.bundle import load_manifest, plot_names
from sparsecodes.serve.playground import RecentL0
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.server import Server, run_server

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "playground"
IMAGE, VECTOR = "digits-softsae", "subspaces-sosae"
API_KEY = "playground-test-key"


@pytest.fixture(scope="module")
def playground_dir(make_run: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sparsecodes.export.publish import export_run

    root = tmp_path_factory.mktemp("playground-models")
    export_run(make_run("softsae"), root / IMAGE, name=IMAGE, quiet=True)
    export_run(make_run("sosae", data="subspaces"), root / VECTOR, name=VECTOR, quiet=True)
    return root


@pytest.fixture(scope="module")
def pg_server(playground_dir: Path) -> Iterator[Server]:
    with run_server(model_dir=playground_dir) as s:
        yield s


def encode(
    server: Server, name: str, row: list[float], headers: dict[str, str] | None = None, **options: Any
) -> dict:
    response = httpx.post(
        f"{server.url}/v1/models/{name}/encode", json={"inputs": [row], **options}, headers=headers
    )
    response.raise_for_status()
    return response.json()


# -- the endpoints ------------------------------------------------------------------------------------


def test_export_copies_the_report_plots_into_the_bundle(playground_dir: Path) -> None:
    manifest = load_manifest(playground_dir / IMAGE)  # verifies every listed file's hash, plots included
    assert {"loss", "active_dims", "reconstructions"} <= set(plot_names(manifest))
    assert manifest.files["plot:loss"].path == "plots/loss.png"


def test_examples_plots_and_stats_endpoints(pg_server: Server) -> None:
    folder = pg_server.settings.model_dir / IMAGE
    with pg_server.client() as c:
        info = c.get(f"/v1/models/{IMAGE}").json()
        assert "loss" in info["plots"]
        body = c.get(f"/v1/models/{IMAGE}/examples").json()
        np.testing.assert_array_equal(
            np.asarray(body["inputs"], np.float32), np.load(folder / "examples.npy")
        )
        assert body["input_shape"] == [8, 8]
        png = c.get(f"/v1/models/{IMAGE}/plots/loss")
        assert png.headers["content-type"] == "image/png"
        assert png.content == (folder / "plots" / "loss.png").read_bytes()
        for bad in ("nope", "..%2Fmanifest", "loss.png", "%2E%2E"):
            missing = c.get(f"/v1/models/{IMAGE}/plots/{bad}")
            assert missing.status_code == 404, bad
            assert (
                "no plot" in missing.json()["error"]["message"]
                or missing.json()["error"]["type"] == "not_found"
            )

        before = c.get(f"/v1/models/{VECTOR}/stats").json()
        rows = np.asarray(c.get(f"/v1/models/{VECTOR}/examples").json()["inputs"])
        l0 = c.post(f"/v1/models/{VECTOR}/encode", json={"inputs": rows.tolist()}).json()["l0"]
        after = c.get(f"/v1/models/{VECTOR}/stats").json()
    assert after["rows_total"] == before["rows_total"] + len(rows)
    hist = dict(zip(after["histogram"]["l0"], after["histogram"]["count"], strict=True))
    for value, count in zip(*np.unique(l0, return_counts=True), strict=True):
        assert hist[int(value)] >= count
    spec = httpx.get(f"{pg_server.url}/openapi.json").json()
    name = httpx.get(f"{pg_server.url}/v1/models").json()["models"][0]["name"]  # per-model operations
    for path in (f"/v1/models/{name}/examples", f"/v1/models/{name}/plots/{{plot}}", f"/v1/models/{name}/stats"):
        assert path in spec["paths"], path
    assert (
        "image/png" in spec["paths"][f"/v1/models/{name}/plots/{{plot}}"]["get"]["responses"]["200"]["content"]
    )


def test_recent_l0_is_a_bounded_ring_buffer() -> None:
    recent = RecentL0(window=5)
    recent.record("m", np.array([1, 2, 3]))
    recent.record("m", np.array([4, 5, 6, 7]))  # wraps: the oldest two (1, 2) drop out
    assert sorted(recent.values("m").tolist()) == [3, 4, 5, 6, 7]
    recent.record("m", np.arange(100))  # more than the window at once: its last five are kept
    summary = recent.summary("m")
    assert summary["histogram"] == {"l0": [95, 96, 97, 98, 99], "count": [1] * 5}
    assert (summary["rows"], summary["rows_total"]) == (5, 107)
    assert recent.summary("other")["l0_mean"] is None


# -- the page in a browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Hard failures, not skips: the browser tests are part of what the playground must show.
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need the playwright package (the dev extra), with no browser download")
    assert Path(CHROMIUM).exists(), (
        "the browser tests need Debian's chromium (scripts/install-system-deps.sh)"
    )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A browser page on the playground that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)

    def settled(self) -> None:
        """Wait until the page's last update (encode, denoise, stats) has rendered."""
        self.page.wait_for_timeout(80)  # past the input debounce, which marks the page busy
        self.page.wait_for_selector('body[data-busy="0"]', timeout=15_000)

    def bars(self) -> int:
        return self.page.locator("#code-chart rect.bar").count()

    def shown_l0(self) -> int:
        return int(self.page.get_attribute("#code-chart", "data-l0"))

    def current_input(self) -> list[float]:
        return self.page.evaluate("state.input")

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def pick(self, model: str) -> None:
        self.page.select_option("#model-select", model)
        self.page.wait_for_selector("#examples .example")
        self.settled()


def test_image_model_examples_drawing_slider_and_denoise(browser: Any, pg_server: Server) -> None:
    p = Page(browser, pg_server.url + "/")
    p.page.wait_for_selector("#model-select option", state="attached")
    p.pick(IMAGE)
    assert p.page.inner_text("#card-title") == IMAGE
    assert p.page.locator("#card-plots img").count() >= 3
    examples = np.load(pg_server.settings.model_dir / IMAGE / "examples.npy")

    p.page.click('#examples .example[data-index="3"]')
    p.settled()
    api_l0 = encode(pg_server, IMAGE, examples[3].tolist())["l0"][0]
    assert p.bars() == p.shown_l0() == api_l0 > 0
    assert p.page.inner_text("#l0") == f"L0 = {api_l0}"
    assert p.page.locator("#recon-view canvas").count() == 2
    p.shot("image-example")

    p.page.click("#clear-canvas")
    p.settled()
    box = p.page.locator("#draw-canvas").bounding_box()
    p.page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.2 * box["height"])
    p.page.mouse.down()
    for t in np.linspace(0, 1, 12):
        p.page.mouse.move(
            box["x"] + (0.3 + 0.4 * t) * box["width"], box["y"] + (0.2 + 0.6 * t) * box["height"]
        )
    p.page.mouse.up()
    p.settled()
    drawn = p.current_input()
    assert max(drawn) > 0, "the stroke left no ink on the input"
    assert p.bars() == encode(pg_server, IMAGE, drawn)["l0"][0] > 0
    p.shot("image-drawn")

    full = p.shown_l0()
    assert full > 2
    p.page.fill("#max-active", "2")
    p.settled()
    assert p.bars() == p.shown_l0() == encode(pg_server, IMAGE, drawn, max_active=2)["l0"][0] <= 2 < full
    assert p.page.locator("#tradeoff-chart circle").count() == 2  # both settings visited for this input
    p.shot("image-max-active-2")

    p.page.fill("#max-active", p.page.get_attribute("#max-active", "max"))
    p.page.fill("#noise", "80")
    p.settled()
    assert p.page.locator("#denoise-view canvas").count() == 3
    assert "denoised" in p.page.inner_text("#denoise-error")
    assert p.page.locator("#stats-chart rect.bar").count() >= 1
    assert "rows served" in p.page.inner_text("#stats-text")
    p.shot("image-denoise")
    assert p.errors == []
    p.page.close()


def test_vector_model_examples_line_plots_and_a_readable_api_error(browser: Any, pg_server: Server) -> None:
    p = Page(browser, f"{pg_server.url}/#model={VECTOR}")
    p.page.wait_for_selector("#examples .example")
    p.settled()
    assert p.page.input_value("#model-select") == VECTOR
    assert p.page.is_visible("#vector-input") and not p.page.is_visible("#image-input")
    examples = np.load(pg_server.settings.model_dir / VECTOR / "examples.npy")
    seen = set()
    for i in (0, 5, 9):
        p.page.click(f'#examples .example[data-index="{i}"]')
        p.settled()
        api_l0 = encode(pg_server, VECTOR, examples[i].tolist())["l0"][0]
        assert p.bars() == api_l0
        seen.add(api_l0)
    assert p.page.locator("#recon-view polyline").count() == 2
    assert p.page.locator("#denoise-view polyline").count() == 3
    p.shot("vector-example")
    assert p.errors == []

    p.page.fill("#vector-text", "1, 2, 3")
    p.page.click("#use-vector")
    p.settled()
    error = p.page.inner_text("#error")
    assert "422" in error and "invalid_input" in error and "expects d_in=40" in error, error
    assert "request failed" in p.page.inner_text("#recon-view")  # the panels say why, they are not blank
    assert "request failed" in p.page.text_content("#code-chart")
    p.shot("vector-api-error")

    p.page.fill("#vector-text", "1, 2, x")
    p.page.click("#use-vector")
    assert '"x" (number 3) is not a number' in p.page.inner_text("#error")
    p.page.close()


def test_api_key_mode_asks_for_a_key_then_works(browser: Any, playground_dir: Path) -> None:
    with run_server(model_dir=playground_dir, api_keys=[API_KEY]) as s:
        p = Page(browser, s.url + "/")
        p.page.wait_for_selector("#auth:not([hidden])")
        assert "requires an API key" in p.page.inner_text("#error")
        assert not p.page.is_visible("#main")
        p.shot("api-key-prompt")

        p.page.fill("#key-input", "wrong")
        p.page.click("#key-form button")
        p.page.wait_for_function("document.getElementById('error').textContent.includes('not accepted')")
        assert p.page.is_visible("#auth")

        p.page.fill("#key-input", API_KEY)
        p.page.click("#key-form button")
        p.page.wait_for_selector("#examples .example")
        p.settled()
        assert p.page.is_hidden("#auth") and p.page.is_hidden("#error")
        auth = {"authorization": f"Bearer {API_KEY}"}
        row = p.current_input()
        name = p.page.input_value("#model-select")
        assert p.bars() == encode(s, name, row, headers=auth)["l0"][0]
        assert p.page.locator("#card-plots img").count() >= 1  # fetched with the key, not <img src>
        p.page.close()


def test_stats_text_claims_varying_l0_only_when_the_rows_seen_differ(browser: Any, pg_server: Server) -> None:
    """The playground said "different inputs use different numbers of latents" even when every row it had
    seen used the same number; the page's own renderer is given both kinds of histogram."""
    p = Page(browser, f"{pg_server.url}/#model={VECTOR}")
    p.page.wait_for_selector("#examples .example")
    p.settled()
    stats = {"rows": 3, "window": 1000, "rows_total": 3, "l0_mean": 5}
    p.page.evaluate("s => renderStats(s)", {**stats, "histogram": {"l0": [5], "count": [3]}})
    same = p.page.inner_text("#stats-text")
    assert "every row used 5 latents" in same and "different" not in same, same
    p.page.evaluate("s => renderStats(s)", {**stats, "histogram": {"l0": [4, 6], "count": [1, 2]}})
    assert "different inputs use different numbers of latents" in p.page.inner_text("#stats-text")
    assert p.errors == []
    p.page.close()


def test_docs_render_the_operations_with_no_network(browser: Any, pg_server: Server) -> None:
    """/docs (Swagger UI) and /redoc render every operation from this server's own assets while every
    request to any other origin is refused (a machine or cluster without internet access)."""
    refused: list[str] = []
    context = browser.new_context()

    def offline(route: Any) -> None:
        if route.request.url.startswith(pg_server.url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", offline)
    operations = sum(
        1
        for path in httpx.get(f"{pg_server.url}/openapi.json").json()["paths"].values()
        for method in path
        if method in ("get", "post", "put", "delete", "patch")
    )
    page = context.new_page()
    page.goto(f"{pg_server.url}/docs")
    page.wait_for_selector(".opblock", timeout=15_000)
    assert page.locator(".opblock").count() == operations > 10
    name = httpx.get(f"{pg_server.url}/v1/models").json()["models"][0]["name"]
    assert f"/v2/models/{name}/infer" in page.inner_text("#swagger-ui")  # one operation per loaded model
    page.goto(f"{pg_server.url}/redoc")
    page.wait_for_selector("[data-section-id^='operation/'], [id^='operation/']", state="attached", timeout=15_000)
    assert page.locator("[id^='operation/']").count() >= operations
    assert refused == [], refused
    context.close()
