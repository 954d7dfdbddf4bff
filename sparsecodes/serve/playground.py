"""The recent code lengths per model, which the playground page and ``/v1/models/{name}/stats`` show.

NumPy only. The engine records every served row here (its one L0 sink); the bundle's plots are defined in
``sparsecodes.bundle``.
"""

from __future__ import annotations

import numpy as np

RECENT_L0_WINDOW = 4096
"""Rows per model whose L0 the service keeps for ``/v1/models/{name}/stats`` (a ring buffer)."""


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
