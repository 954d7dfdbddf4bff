"""Kind name → model class. One place; duplicate names are rejected; configs load through it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from sparsecodes.train.models.base import SAEConfig, SparseAutoencoder

# Modules that define kinds, imported on first use so that `import sparsecodes.train.models.registry` stays cheap.
_KIND_MODULES = (
    "sparsecodes.train.models.sosae",
    "sparsecodes.train.models.softsae",
    "sparsecodes.train.models.vaease",
    "sparsecodes.train.models.topk",
    "sparsecodes.train.models.batchtopk",
    "sparsecodes.train.models.relu_l1",
    "sparsecodes.train.models.dae",
)

_REGISTRY: dict[str, type[SparseAutoencoder]] = {}
_loaded = False


def register(name: str) -> Callable[[type[SparseAutoencoder]], type[SparseAutoencoder]]:
    """Class decorator: ``@register("topk")``."""

    def wrap(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"kind {name!r} is registered twice ({_REGISTRY[name].__name__}, {cls.__name__})"
            )
        cls.kind = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _KIND_MODULES:
            importlib.import_module(module)
        _loaded = True


def kinds() -> list[str]:
    """Registered kind names, in registration order."""
    _load()
    return list(_REGISTRY)


def model_class(kind: str) -> type[SparseAutoencoder]:
    _load()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; choose one of: {', '.join(_REGISTRY)}") from None


def make_config(kind: str, **options: Any) -> SAEConfig:
    """A validated config for ``kind`` (unknown options are rejected, with the known ones listed)."""
    cls = model_class(kind)
    return cls.config_cls.from_dict({**options, "kind": kind})


def build(cfg: SAEConfig | dict[str, Any]) -> SparseAutoencoder:
    """A freshly initialised model for a config (or a config dict holding ``kind``)."""
    if isinstance(cfg, dict):
        cfg = make_config(**cfg)
    return model_class(cfg.kind)(cfg)
