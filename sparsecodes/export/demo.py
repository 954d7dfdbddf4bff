"""Demo bundles for a first run: small models trained and exported in about a minute on 2 CPU cores.

``sparsecodes demo`` runs :func:`build_demo_bundles`; ``sparsecodes serve --demo`` runs that command in a child
process when the model folder holds no bundle.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DemoModel:
    name: str
    kind: str
    data: str
    model: dict[str, Any]
    train: dict[str, Any]
    data_options: dict[str, Any] = field(default_factory=dict)


DEMO_MODELS = (
    DemoModel(
        "digits-sosae",
        "sosae",
        "digits",
        # push_coef 0.1 on digits: cut point ≈ 27 of 64, fvu ≈ 0.08 (the default 1.0 keeps only ~3 latents here).
        {"d_sae": 64, "hidden": [128], "push_coef": 0.1},
        {"steps": 1500, "batch_size": 256, "lr": 3e-3},
    ),
    DemoModel(
        "manifold-softsae",
        "softsae",
        "manifold",
        {"d_sae": 256, "k": 8},
        {"steps": 1500, "batch_size": 256, "lr": 3e-3},
    ),
    DemoModel(
        "subspaces-vaease",
        "vaease",
        "subspaces",
        # The VAEase reference setting (docs/methods.md): narrow Swish MLP, lr 0.01, batch 1024, cosine restarts.
        {"d_sae": 20, "hidden": [40, 40, 40]},
        {"steps": 2000, "batch_size": 1024, "lr": 1e-2, "lr_schedule": "cosine_restarts"},
    ),
)


def build_demo_bundles(
    model_dir: str | Path, *, show_progress: bool = True, force: bool = False
) -> list[Path]:
    """Train and export every demo model into ``model_dir`` (one bundle folder each); returns their paths.

    Bundles that already exist are kept unless ``force``.
    """
    from sparsecodes.export.publish import export_run
    from sparsecodes.train.trainer import train_run

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    made = []
    with tempfile.TemporaryDirectory(prefix="sparsecodes-demo-") as tmp:
        for demo in DEMO_MODELS:
            target = model_dir / demo.name
            if target.exists() and not force:
                made.append(target)
                continue
            run = train_run(
                demo.kind,
                demo.data,
                Path(tmp) / demo.name,
                model=demo.model,
                data_options=demo.data_options,
                train=demo.train,
                show_progress=show_progress,
            )
            export_run(run, target, name=demo.name, force=force, quiet=not show_progress)
            made.append(target)
    return made


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, default=Path("models"), help="model folder to fill")
    p.add_argument("--force", action="store_true", help="rebuild bundles that already exist")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    for path in build_demo_bundles(args.models, show_progress=not args.no_progress, force=args.force):
        print(f"bundle ready: {path}")
    return 0
