"""Sparse codes as a batch in CSR form, the type every layer of the service passes around.

A batch of ``n`` codes is ``indptr`` int64 ``[n + 1]``, ``indices`` int64 ``[nnz]`` (served latent, ascending
within a row) and ``values`` float32 ``[nnz]`` (nonzero). Row ``i`` is
``indices[indptr[i]:indptr[i+1]]``, ``values[...]``. NumPy only: the client uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

_BLOCK_ENTRIES = 1 << 17
"""Entries per block when scanning a dense code matrix (128k: the block's mask fits in L2)."""


@dataclass(frozen=True)
class SparseCodes:
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @cached_property
    def l0(self) -> np.ndarray:
        """Active latents per row ``[n]`` (int64)."""
        return self.indptr[1:] - self.indptr[:-1]  # np.diff's own overhead is most of its cost for a row

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.indices[a:b], self.values[a:b]

    def rows(self, start: int, stop: int) -> SparseCodes:
        """Rows ``[start, stop)`` as their own batch (views, no copy of the entries)."""
        a, b = int(self.indptr[start]), int(self.indptr[stop])
        part = SparseCodes(self.indptr[start : stop + 1] - a, self.indices[a:b], self.values[a:b])
        if "l0" in self.__dict__:  # computed for the whole batch: the part's is a slice of it (not a subtraction per part)
            part.__dict__["l0"] = self.__dict__["l0"][start:stop]
        return part

    def coo_rows(self) -> np.ndarray:
        """Row of each entry ``[nnz]`` (int64), as the sparse decoder takes it."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.l0)

    def to_dense(self, d: int) -> np.ndarray:
        """``[n, d]`` float32 with zeros outside the code."""
        out = np.zeros((len(self), d), dtype=np.float32)
        out[self.coo_rows(), self.indices] = self.values
        return out

    @classmethod
    def from_dense(cls, codes: np.ndarray) -> SparseCodes:
        """Keep the nonzero entries of ``codes [n, d]`` (exact zeros are inactive latents)."""
        n, d = codes.shape
        # Flat positions of a boolean mask (several times faster than np.nonzero on the floats), block
        # by block so that the mask stays in cache; row counts come from the few positions, not the mask.
        step = max(1, _BLOCK_ENTRIES // max(d, 1))
        blocks = [np.flatnonzero(codes[start : start + step] != 0) + start * d for start in range(0, n, step)]
        positions = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(positions // max(d, 1), minlength=n), out=indptr[1:])
        values = codes.reshape(-1)[positions].astype(np.float32, copy=False)
        return cls(indptr, positions % max(d, 1), values)

    @classmethod
    def from_rows(cls, rows: list[tuple[np.ndarray, np.ndarray]]) -> SparseCodes:
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(i) for i, _ in rows], out=indptr[1:])
        if not rows:
            return cls(indptr, np.zeros(0, np.int64), np.zeros(0, np.float32))
        indices = np.concatenate([i for i, _ in rows]).astype(np.int64, copy=False)
        values = np.concatenate([v for _, v in rows]).astype(np.float32, copy=False)
        return cls(indptr, indices, values)

    def cap(self, max_active: int | None) -> SparseCodes:
        """Keep at most ``max_active`` largest-magnitude entries per row (indices stay ascending).

        Ties at the boundary keep the lower latent index, so the result is deterministic.
        """
        if max_active is None or len(self) == 0 or int(self.l0.max(initial=0)) <= max_active:
            return self
        rows = self.coo_rows()
        # Order entries by row, then by decreasing |value|, then by index; rank within the row.
        order = np.lexsort((self.indices, -np.abs(self.values), rows))
        rank = np.empty(self.nnz, dtype=np.int64)
        rank[order] = np.arange(self.nnz) - self.indptr[rows[order]]
        keep = rank < max_active
        counts = np.minimum(self.l0, max_active)
        indptr = np.zeros_like(self.indptr)
        np.cumsum(counts, out=indptr[1:])
        return SparseCodes(indptr, self.indices[keep], self.values[keep])
