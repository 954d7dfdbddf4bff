"""What the playground page shows besides codes: a bundle's plots and the recent code lengths per model.

NumPy and ``service.bundle`` only (export imports the plot constants; the HTTP side is
``service.playground_routes``).

Plots: export copies the training report's ``plots/<name>.png`` into the bundle and lists each in the
manifest's ``files`` under the role ``plot:<name>``, hashed like every other file. The service serves only
names listed there, so a URL never becomes a path.
"""

from __future__ import annotations

import re

import numpy as np

from service.bundle import Manifest

PLOTS_DIR = "plots"
"""Folder of the plots, in a run folder and in a bundle alike."""
PLOT_ROLE_PREFIX = "plot:"
PLOT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""A plot's name (its file's stem): URL-safe, no dots, so ``plots/<name>.png`` is the only file it can name."""

RECENT_L0_WINDOW = 4096
"""Rows per model whose L0 the service keeps for ``/v1/models/{name}/stats`` (a ring buffer)."""


def plot_role(name: str) -> str:
    return f"{PLOT_ROLE_PREFIX}{name}"


def plot_names(manifest: Manifest) -> list[str]:
    """The plots a bundle lists (``plot:<name>`` roles), sorted."""
    return sorted(
        role[len(PLOT_ROLE_PREFIX) :] for role in manifest.files if role.startswith(PLOT_ROLE_PREFIX)
    )


class RecentL0:
    """The L0 of the last ``window`` served rows of each model: one int32 ring buffer per model.

    Only the event loop touches it (routes call ``record`` after encoding), so it needs no lock. Memory is
    bounded by ``window`` × the number of loaded models (callers record only for loaded models).
    """

    def __init__(self, window: int = RECENT_L0_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1 row, got {window}")
        self.window = window
        self._buffers: dict[str, np.ndarray] = {}
        self._written: dict[str, int] = {}
        """Rows recorded since start (the next write position is this modulo ``window``)."""

    def record(self, model: str, l0: np.ndarray) -> None:
        """Append the code lengths ``l0 [n]`` of one request's rows."""
        l0 = np.asarray(l0).ravel()
        if l0.size == 0:
            return
        start = self._written.get(model, 0)
        self._written[model] = start + l0.size
        if l0.size > self.window:  # only the last window's worth can stay
            start, l0 = start + l0.size - self.window, l0[-self.window :]
        buf = self._buffers.get(model)
        if buf is None:
            buf = self._buffers[model] = np.zeros(self.window, dtype=np.int32)
        at = start % self.window
        if at + l0.size <= self.window:  # the usual case (a request of a few rows): one slice copy
            buf[at : at + l0.size] = l0
        else:
            buf[(at + np.arange(l0.size)) % self.window] = l0

    def values(self, model: str) -> np.ndarray:
        """The recorded L0 values ``[min(written, window)]`` (order not kept: only the distribution matters)."""
        written = self._written.get(model, 0)
        if written == 0:
            return np.zeros(0, dtype=np.int32)
        return self._buffers[model][: min(written, self.window)]

    def summary(self, model: str) -> dict[str, object]:
        """The distribution of recent L0: distinct values with their counts, mean, and rows seen in all."""
        values = self.values(model)
        l0, counts = np.unique(values, return_counts=True)
        return {
            "window": self.window,
            "rows": int(values.size),
            "rows_total": self._written.get(model, 0),
            "l0_mean": float(values.mean()) if values.size else None,
            "histogram": {"l0": l0.tolist(), "count": counts.tolist()},
        }
