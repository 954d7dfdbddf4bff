"""scikit-learn's bundled 8×8 handwritten digits: real images that need no download."""

from __future__ import annotations

from sparsecodes.train.data.base import DataError, Dataset, check_finite

# The bundled pixels are counts 0..16 (4×4 blocks of a 32×32 bitmap); dividing puts them in [0, 1] like
# every other image source here.
_PIXEL_MAX = 16.0


def digits() -> Dataset:
    """1,797 rows × 64 pixels in [0, 1], labels 0..9, ``input_shape`` (8, 8)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("the digits data set needs scikit-learn: pip install 'sparsecodes[train]'") from e
    bunch = load_digits()
    x = bunch.data / _PIXEL_MAX
    check_finite(x, "digits")
    return Dataset("digits", x, labels=bunch.target, input_shape=(8, 8), spec={"name": "digits"})
