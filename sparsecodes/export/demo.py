"""Demo bundles for a first run: small models, trained (seeded) and exported by ``sparsecodes demo``.

The built bundles ship in the package (``sparsecodes/serve/demo_bundles/``, :data:`sparsecodes.bundle.DEMO_BUNDLES`),
so ``sparsecodes serve --demo`` (``make serve``) needs neither torch nor any training. ``make demo`` rebuilds
them into a scratch folder and checks (:func:`compare_with_shipped`) that each rebuilt bundle verifies and
that its re-measured metrics match the shipped manifest's within :data:`TOLERANCES` (training is seeded, but
float sums differ across BLAS kernels and machines, so the weights are close, not bit-identical).
To update the shipped bundles: ``sparsecodes demo --models sparsecodes/serve/demo_bundles --force``.
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
        # push_coef 0.1 on digits: cut point ≈ 27 of 64, fvu ≈ 0.08 (also the default now; 1.0 kept only ~3 latents).
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


TOLERANCES: dict[str, tuple[float, float]] = {
    # metric → (absolute, relative): a rebuilt value v matches the shipped s when |v - s| <= abs + rel·|s|.
    "fvu": (0.02, 0.10),
    "mse": (0.02, 0.10),
    "l0_mean": (0.5, 0.10),
    "l0_std": (0.5, 0.25),
}
"""How close a rebuilt demo bundle's re-measured metrics must be to the shipped ones (``make demo``)."""


def compare_with_shipped(built: list[Path], shipped_dir: Path) -> list[str]:
    """Problems found comparing rebuilt bundles with the shipped ones (empty: they match). Each rebuilt
    bundle is verified (every file against its manifest's sha256), then its metrics and served width are
    compared with the shipped manifest's within :data:`TOLERANCES`."""
    from sparsecodes.bundle import load_manifest

    problems = []
    for path in built:
        new = load_manifest(path)  # raises BundleError if a file does not verify
        shipped_path = shipped_dir / path.name
        if not (shipped_path / "manifest.json").is_file():
            problems.append(f"{path.name}: no shipped bundle at {shipped_path}")
            continue
        old = load_manifest(shipped_path)
        if (new.kind, new.d_in, new.d_sae) != (old.kind, old.d_in, old.d_sae):
            problems.append(f"{path.name}: kind/d_in/d_sae {(new.kind, new.d_in, new.d_sae)} != shipped {(old.kind, old.d_in, old.d_sae)}")
        for metric, (atol, rtol) in TOLERANCES.items():
            a, b = getattr(new.metrics, metric), getattr(old.metrics, metric)
            ok = abs(a - b) <= atol + rtol * abs(b)
            print(f"{path.name:<18} {metric:<8} rebuilt {a:<10.4g} shipped {b:<10.4g} {'ok' if ok else 'DIFFERS'}")
            if not ok:
                problems.append(f"{path.name}: {metric} {a:.4g} vs shipped {b:.4g} (tolerance {atol} + {rtol:.0%})")
    return problems


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, default=Path("models"), help="model folder to fill (default: models)")
    p.add_argument(
        "--check-against",
        type=Path,
        metavar="DIR",
        help="after building, verify the bundles and compare their metrics with the bundles in DIR "
        "(the shipped ones: sparsecodes/serve/demo_bundles); exit 1 if they differ beyond the tolerances",
    )
    p.add_argument("--force", action="store_true", help="rebuild bundles that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bars while training and exporting")


def run(args: argparse.Namespace) -> int:
    built = build_demo_bundles(args.models, show_progress=not args.no_progress, force=args.force)
    for path in built:
        print(f"bundle ready: {path}")
    if args.check_against is not None:
        problems = compare_with_shipped(built, args.check_against)
        for problem in problems:
            print(f"demo check: {problem}")
        if problems:
            return 1
        print(f"demo check: the rebuilt bundles verify and match {args.check_against} within the tolerances")
    return 0
