"""``SparseCodes``, the contract every layer passes codes in: a batch's rows as their own batches, with the code
lengths (``l0``) the same whether the batch's were computed before it was sliced (the batch lane's way) or not."""

from __future__ import annotations

import numpy as np
import pytest

from sparsecodes.codes import SparseCodes


def _batch(seed: int = 0) -> SparseCodes:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(7, 32)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.7] = 0
    dense[3] = 0  # a row with no active latent
    return SparseCodes.from_dense(dense)


@pytest.mark.parametrize(("start", "stop"), [(0, 1), (2, 5), (3, 4), (0, 7), (6, 7), (4, 4)])
def test_a_slice_is_the_same_whether_the_batch_knew_its_l0_or_not(start: int, stop: int) -> None:
    plain, primed = _batch(), _batch()
    primed.l0  # noqa: B018 (computed before slicing, as Engine.encode_now does)
    a, b = plain.rows(start, stop), primed.rows(start, stop)
    for field in ("indptr", "indices", "values"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert "l0" in b.__dict__ and "l0" not in a.__dict__  # sliced from the batch's, and not computed
    assert b.l0.tolist() == a.l0.tolist() == (a.indptr[1:] - a.indptr[:-1]).tolist()
    assert b.l0.tolist() == plain.l0[start:stop].tolist()


def test_capping_a_slice_keeps_its_largest_entries() -> None:
    codes = _batch()
    codes.l0  # noqa: B018
    part = codes.rows(1, 3).cap(2)
    assert part.l0.tolist() == np.minimum(codes.l0[1:3], 2).tolist()
    for i in range(len(part)):
        kept, values = part.row(i)
        whole_indices, whole_values = codes.row(1 + i)
        top = np.sort(whole_indices[np.argsort(-np.abs(whole_values), kind="stable")[:2]])
        assert kept.tolist() == top.tolist() and np.all(np.isin(values, whole_values))
