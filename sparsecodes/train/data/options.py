"""Checks for data-source options: each returns the value as a plain Python type (so specs stay JSON) or
raises DataError saying which option was wrong and what was expected."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any, TypeVar

import numpy as np

from sparsecodes.train.data.base import DataError

T = TypeVar("T")


def call_with_options(load: Callable[..., T], options: dict[str, Any], what: str) -> T:
    """Call ``load(**options)`` after checking every option is one of its keyword-only parameters."""
    known = [p.name for p in inspect.signature(load).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DataError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {what}; "
            f"known options: {', '.join(known) or '(none)'}"
        )
    return load(**options)


def int_option(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """An integer in ``[lo, hi]`` (``hi`` None: no upper bound). Bools are rejected: ``True`` is no count."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise DataError(f"option {name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"≥ {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise DataError(f"option {name} must be {bound}, got {value}")
    return int(value)


def float_option(name: str, value: Any, lo: float = 0.0) -> float:
    """A finite real number ≥ ``lo``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < lo:
        raise DataError(f"option {name} must be a finite number ≥ {lo}, got {value!r}")
    return float(value)


def dims_option(name: str, value: Any, d: int) -> list[int]:
    """A non-empty list of group dimensions, each in ``[1, d]``."""
    if not isinstance(value, list | tuple | np.ndarray):
        raise DataError(f"option {name} must be a list of integers such as [4, 4, 4], got {value!r}")
    items = value.tolist() if isinstance(value, np.ndarray) else list(value)
    if not items:
        raise DataError(f"option {name} must list at least one group dimension, got {value!r}")
    return [int_option(f"{name}[{i}]", v, 1, d) for i, v in enumerate(items)]


def choice_option(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise DataError(f"option {name} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)
