"""Synthetic sets with known intrinsic dimension per row (docs/methods.md, "Data that works offline").

``subspaces``: the VAEase union-of-subspaces set. ``manifold``: groups of different intrinsic dimension,
each embedded in ``R^d`` by its own random map, linear or smooth nonlinear. Both are pure functions of
their options (seeded ``numpy.random.default_rng``), so a spec rebuilds them bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from sparsecodes.train.data.base import DataError, Dataset, check_finite
from sparsecodes.train.data.options import choice_option, dims_option, float_option, int_option

EMBEDDINGS = ("linear", "nonlinear")


def subspaces(
    *, n: int = 6000, dims: Sequence[int] = (4, 4, 4), d: int = 40, seed: int = 0, noise: float = 0.0
) -> Dataset:
    """``n`` rows in ``R^d``, split evenly over ``len(dims)`` subspaces: ``x = A·diag(1_S)·u (+ noise·ε)``.

    One ``A ~ N(0,1)^{d×d}`` is shared; group ``g`` keeps the coordinates ``S_g`` (``|S_g| = dims[g]``,
    drawn without replacement, so ``rank = dims[g]`` exactly) of ``u ~ N(0, I_d)``. The groups' sets
    are disjoint when they fit (``sum(dims) ≤ d``), so no two subspaces share a direction; otherwise
    each is drawn on its own. ``x``: ``[n, d]``; labels = groups = subspace id; true_dim = ``dims[g]``.
    """
    d = int_option("d", d, 1)
    dims = dims_option("dims", dims, d)
    n = int_option("n", n, len(dims))
    seed, noise = int_option("seed", seed, 0), float_option("noise", noise)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    if sum(dims) <= d:
        cuts = np.cumsum(dims)[:-1]
        coord_sets = np.split(rng.permutation(d)[: sum(dims)], cuts)
    else:
        coord_sets = [rng.choice(d, size=k, replace=False) for k in dims]
    groups = _group_ids(n, len(dims), rng)
    u = rng.standard_normal((n, d))
    mask = np.zeros((len(dims), d))
    for g, s in enumerate(coord_sets):
        mask[g, s] = 1.0
    x = (u * mask[groups]) @ a.T
    if noise > 0:
        x += noise * rng.standard_normal(x.shape)
    spec = {"name": "subspaces", "n": n, "dims": dims, "d": d, "seed": seed, "noise": noise}
    return _grouped("subspaces", x, groups, dims, spec)


def manifold(
    *,
    n: int = 5000,
    dims: Sequence[int] = (1, 2, 4, 8, 16),
    d: int = 64,
    embedding: str = "linear",
    seed: int = 0,
    noise: float = 0.0,
) -> Dataset:
    """``n`` rows in ``R^d``, split evenly over groups of intrinsic dimension ``dims[g]``.

    Group ``g`` draws latents ``t ~ N(0, I_k)`` (``k = dims[g]``) and maps them with its own
    :func:`random_embedding`, then is scaled so its mean squared norm is ``d`` (every group on one
    scale, so no group dominates the loss by size alone). ``x``: ``[n, d]``; labels = groups = group id;
    true_dim = ``dims[g]``.
    """
    d = int_option("d", d, 1)
    dims = dims_option("dims", dims, d)
    n = int_option("n", n, len(dims))
    embedding = choice_option("embedding", embedding, EMBEDDINGS)
    seed, noise = int_option("seed", seed, 0), float_option("noise", noise)
    rng = np.random.default_rng(seed)
    groups = _group_ids(n, len(dims), rng)
    x = np.empty((n, d))
    for g, k in enumerate(dims):
        rows = groups == g
        f = random_embedding(k, d, embedding, rng)
        x_g = f(rng.standard_normal((int(rows.sum()), k)))
        x[rows] = x_g * np.sqrt(d / np.mean(np.sum(x_g**2, axis=1)))
    if noise > 0:
        x += noise * rng.standard_normal(x.shape)
    spec = {
        "name": "manifold",
        "n": n,
        "dims": dims,
        "d": d,
        "embedding": embedding,
        "seed": seed,
        "noise": noise,
    }
    return _grouped("manifold", x, groups, dims, spec)


def random_embedding(
    k: int, d: int, embedding: str, rng: np.random.Generator
) -> Callable[[np.ndarray], np.ndarray]:
    """A random map ``R^k → R^d`` taking latents ``[m, k]`` to points ``[m, d]``.

    ``linear``: ``t ↦ A t`` with ``A ~ N(0, 1/k)^{d×k}`` (rank ``k``). ``nonlinear``: a random
    two-layer network ``t ↦ W₃ sin(W₂ tanh(W₁ t + b₁) + b₂)``, hidden width ``2k + 8``; smooth, and its
    Jacobian has rank ``k`` almost everywhere (tanh' > 0 and generic weights), so the image is a
    ``k``-dimensional manifold that no linear subspace of dimension ``k`` contains.
    """
    if embedding == "linear":
        a = rng.standard_normal((d, k)) / np.sqrt(k)
        return lambda t: t @ a.T
    if embedding != "nonlinear":
        raise DataError(f"embedding must be one of {', '.join(EMBEDDINGS)}; got {embedding!r}")
    h = 2 * k + 8
    w1, b1 = rng.standard_normal((h, k)) / np.sqrt(k), rng.uniform(-1, 1, h)
    w2, b2 = rng.standard_normal((h, h)) / np.sqrt(h), rng.uniform(-np.pi, np.pi, h)
    w3 = rng.standard_normal((d, h)) / np.sqrt(h)
    return lambda t: np.sin(np.tanh(t @ w1.T + b1) @ w2.T + b2) @ w3.T


def _group_ids(n: int, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """``[n]`` group ids, as even as possible (the first ``n % n_groups`` groups get one more), shuffled
    so that any prefix of the rows is balanced too."""
    return rng.permutation(np.arange(n) % n_groups)


def _grouped(name: str, x: np.ndarray, groups: np.ndarray, dims: list[int], spec: dict) -> Dataset:
    check_finite(x, name)
    return Dataset(name, x, labels=groups, groups=groups, true_dim=np.asarray(dims)[groups], spec=spec)
