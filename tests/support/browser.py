"""Headless Chromium for the browser tests: Debian's package, launched by Playwright (no browser download).

The flags keep it off the network it cannot reach here (background services, QUIC, component updates).
"""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
