"""The Python client: sync and async, every wire encoding gives the same arrays."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sparsecodes.serve.client import AsyncClient, Client, SparsecodesError
from tests.support.server import Server

NAME = "digits-softsae"


def test_sync_client_encodings_agree(server: Server) -> None:
    x = np.load(server.settings.model_dir / NAME / "examples.npy")
    results = {}
    for encoding in ("binary", "base64", "json"):
        with Client(server.url, encoding=encoding) as c:
            enc = c.encode(NAME, x, return_reconstruction=True, max_active=3)
            results[encoding] = (enc, c.decode(NAME, enc.codes), c.denoise(NAME, x, max_active=3))
    ref_enc, ref_dec, ref_den = results["binary"]
    assert ref_enc.model == NAME and len(ref_enc.codes) == len(x) and ref_enc.l0.max() <= 3
    np.testing.assert_array_equal(ref_dec, ref_enc.reconstructions)
    np.testing.assert_array_equal(ref_den.outputs, ref_enc.reconstructions)
    for enc, dec, den in results.values():
        for field in ("indptr", "indices", "values"):
            np.testing.assert_array_equal(getattr(enc.codes, field), getattr(ref_enc.codes, field))
        np.testing.assert_array_equal(enc.reconstructions, ref_enc.reconstructions)
        np.testing.assert_allclose(enc.reconstruction_error, ref_enc.reconstruction_error, rtol=1e-6)
        np.testing.assert_array_equal(dec, ref_dec)
        np.testing.assert_array_equal(den.outputs, ref_den.outputs)


def test_single_row_and_models(server: Server) -> None:
    x = np.load(server.settings.model_dir / NAME / "examples.npy")
    with Client(server.url) as c:
        assert c.ready()
        assert {m["name"] for m in c.models()} == {"digits-topk", NAME}
        one = c.encode(NAME, x[0])
        many = c.encode(NAME, x)
    indices, values = many.codes.row(0)
    np.testing.assert_array_equal(one.codes.indices, indices)
    np.testing.assert_array_equal(one.codes.values, values)


def test_async_client_matches_sync(server: Server) -> None:
    x = np.load(server.settings.model_dir / NAME / "examples.npy")

    async def scenario():
        async with AsyncClient(server.url) as c:
            assert await c.ready()
            enc = await c.encode(NAME, x, return_reconstruction=True)
            return enc, await c.decode(NAME, enc.codes)

    enc, dec = asyncio.run(scenario())
    with Client(server.url, encoding="json") as c:
        ref = c.encode(NAME, x, return_reconstruction=True)
    np.testing.assert_array_equal(enc.codes.values, ref.codes.values)
    np.testing.assert_array_equal(dec, ref.reconstructions)


def test_client_raises_the_service_error(server: Server) -> None:
    with Client(server.url) as c:
        with pytest.raises(SparsecodesError) as e:
            c.encode(NAME, np.zeros((2, 5), np.float32))
        assert e.value.status == 422 and e.value.type == "invalid_input" and "d_in=64" in e.value.message
        assert e.value.request_id
        with pytest.raises(SparsecodesError) as e:
            c.encode("nope", np.zeros((1, 64)))
        assert e.value.status == 404
