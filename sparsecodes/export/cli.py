"""``sparsecodes export RUN_DIR --out BUNDLE_DIR [--name NAME] [--opset N] [--fp16] [--force]``;
``--format saelens`` writes a SAELens SAE folder instead of a bundle."""

from __future__ import annotations

import argparse

from sparsecodes.errors import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sparsecodes.export.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (from `sparsecodes train`)")
    parser.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="the bundle folder to create")
    parser.add_argument(
        "--name", help="model name the service serves it under (default: the run folder's name)"
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        metavar="N",
        help=f"ONNX opset, {MIN_OPSET}–{MAX_OPSET} (default {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="also write half-precision graphs for GPU serving (float32 inputs and outputs)",
    )
    parser.add_argument("--force", action="store_true", help="replace BUNDLE_DIR if it exists")
    parser.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        help="serve every trained latent: no SOSAE cut, no dead-latent pruning",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the bundle's path")
    parser.add_argument(
        "--format",
        choices=("bundle", "saelens"),
        default="bundle",
        help="bundle: our verified ONNX bundle (default); saelens: a SAELens SAE folder (cfg.json + "
        "sae_weights.safetensors) for the kinds SAELens represents (topk, batchtopk, relu_l1)",
    )


def run(args: argparse.Namespace) -> int:
    from sparsecodes.bundle import BundleError
    from sparsecodes.export.onnx import ExportError
    from sparsecodes.export.publish import export_run
    from sparsecodes.train.run import RunError

    if args.format == "saelens":
        from sparsecodes.export.saelens import export_saelens

        try:
            export_saelens(args.run_dir, args.out, force=args.force, quiet=args.quiet)
        except (ExportError, RunError) as e:
            raise CommandError(str(e)) from None
        print(args.out)
        return 0
    try:
        manifest = export_run(
            args.run_dir,
            args.out,
            name=args.name,
            opset=args.opset,
            fp16=args.fp16,
            force=args.force,
            quiet=args.quiet,
            prune=args.prune,
        )
    except (ExportError, RunError, BundleError) as e:
        raise CommandError(str(e)) from None
    if args.quiet:
        print(args.out)
        return 0
    m, f = manifest.metrics, manifest.flops_per_row
    print(
        f"bundle {args.out}: {manifest.name} {manifest.version} ({manifest.kind}, d_in {manifest.d_in}, "
        f"d_served {manifest.d_served} of d_sae {manifest.d_sae})"
    )
    print(
        f"  on the graphs: mse {m.mse:.4g}, fvu {m.fvu:.4f}, l0 {m.l0_mean:.2f} ± {m.l0_std:.2f} "
        f"({m.n_rows} held-out rows)"
    )
    print(
        f"  encoder FLOPs/row {f.encoder_served:,} (trained {f.encoder_full:,}); decode dense {f.decoder_dense:,},"
        f" sparse {f.decoder_sparse_per_nnz:,}/nnz + {f.decoder_sparse_fixed:,}"
    )
    for precision, p in manifest.parity.items():
        print(
            f"  parity {precision}: max abs {p.max_abs_error:.2e}, max rel {p.max_rel_error:.2e} (tolerance "
            f"{p.tolerance:g}), boundary ties {p.index_mismatch_rows}/{p.rows_checked} rows"
        )
    return 0
