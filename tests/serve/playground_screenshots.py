"""Regenerate the README's playground screenshots (``docs/images/playground-*.png``) from real bundles.

Usage: ``python -m tests.serve.playground_screenshots MODEL_DIR`` where MODEL_DIR holds the demo bundles
(the shipped ones: ``sparsecodes/serve/demo_bundles``; ``sparsecodes demo`` rebuilds them), i.e.
``digits-sosae`` and ``manifold-softsae``. Uses Debian's chromium through Playwright, like the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.server import run_server

OUT = Path(__file__).resolve().parents[2] / "docs" / "images"


def main(model_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with run_server(model_dir=model_dir) as s, sync_playwright() as p:
        # Encode every example once, so the recent-L0 panel shows a distribution.
        for m in httpx.get(s.url + "/v1/models").json()["models"]:
            rows = httpx.get(f"{s.url}/v1/models/{m['name']}/examples").json()["inputs"]
            httpx.post(f"{s.url}/v1/models/{m['name']}/encode", json={"inputs": rows}).raise_for_status()
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1100})

        def settle() -> None:
            page.wait_for_timeout(150)
            page.wait_for_selector('body[data-busy="0"]')

        page.goto(s.url + "/#model=digits-sosae")
        page.wait_for_selector("#examples .example")
        settle()
        page.click('#examples .example[data-index="2"]')
        settle()
        for cap in ("3", "2", "1"):  # visit a few caps so the trade-off trace has points
            page.fill("#max-active", cap)
            settle()
        page.fill("#max-active", page.get_attribute("#max-active", "max"))
        settle()
        page.screenshot(path=str(OUT / "playground-image.png"), full_page=True)
        page.fill("#max-active", "2")
        page.fill("#noise", "60")
        settle()
        page.screenshot(path=str(OUT / "playground-max-active-denoise.png"), full_page=True)
        page.goto(s.url + "/#model=manifold-softsae")
        page.reload()
        page.wait_for_selector("#examples .example")
        settle()
        page.click('#examples .example[data-index="4"]')
        settle()
        page.screenshot(path=str(OUT / "playground-vector.png"), full_page=True)
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
